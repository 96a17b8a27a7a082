"""ComfyUI nodes of the LongCat-Video pack: the only package that imports ComfyUI.

``LongCatExtension`` is resolved lazily so that ``nodes.logic`` (pure helpers, no ComfyUI) can
be imported by the CPU tests without a ComfyUI tree.
"""


def __getattr__(name):
    if name == "LongCatExtension":
        from .extension import LongCatExtension

        return LongCatExtension
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["LongCatExtension"]
