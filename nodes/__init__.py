"""ComfyUI nodes of the LongCat-Video pack: the only package that imports ComfyUI.

``LongCatExtension`` is resolved lazily so that the pure helper modules (``bsa_widgets``,
``bsa_report``, ``text_condition``, ``sampling_inputs``, ``long_video_settings``,
``weight_dtypes``: no ComfyUI) can be imported by the CPU tests without a ComfyUI tree.
"""


def __getattr__(name):
    if name == "LongCatExtension":
        from .extension import LongCatExtension

        return LongCatExtension
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["LongCatExtension"]
