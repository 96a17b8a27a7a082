"""Load LongCat-Video-Avatar DiT weights.

Layouts: the official diffusers folders (1.5 ``base_model/``, 1.0 ``avatar_single/`` and
``avatar_multi/``: ``config.json`` + sharded safetensors + index), the official INT8 copy
(``base_model_int8/``: ``quantized_model.safetensors.index.json``, each Linear but
``final_layer.linear`` stored as ``<m>.weight_int8`` int8 ``[out, in]`` + ``<m>.weight_scale``
fp32 ``[out]``; dequantized here as the official layer does per call, ``int8 · scale`` in the
compute dtype) and single safetensors files with the official key names. Headers are validated
before any tensor is read, as for the base DiT (``longcat.weights``). Imports nothing from ComfyUI.
"""

import json
from pathlib import Path

import torch
from safetensors import safe_open

from .. import weights as base
from ..build import resolve_block_kernels
from ..layers import cast_ops
from ..scaled_fp8 import is_scale_key, scale_key, weight_key
from .dit import LongCatAvatarDiT
from .embeds import VERSIONS

AUDIO_SIGNATURE = ("audio_proj.proj1.weight", "blocks.0.audio_cross_attn.kv_linear.weight")
INT8_SUFFIX = ".weight_int8"
INT8_INDEX = "quantized_model.safetensors.index.json"
_KIJAI_AUDIO_PROJ = "multitalk_audio_proj."


def is_avatar(keys) -> bool:
    """True when (official-named) ``keys`` hold the Avatar audio layers."""
    return all(k in keys for k in AUDIO_SIGNATURE)


def _collect(path: Path) -> dict:
    """Official-named tensor infos of a file, index or folder; INT8 weights keep their key
    ``<m>.weight`` with dtype int8 next to ``<m>.scale_weight``."""
    if path.is_dir() and (path / INT8_INDEX).is_file():
        path = path / INT8_INDEX
    if path.is_file() and path.suffix == ".safetensors" and any(
            _KIJAI_AUDIO_PROJ in k for k in base.read_header(path)):
        raise ValueError(f"{path.name}: Kijai's Avatar layout is not supported (only its audio projector's key "
                         "names are documented); use the official Avatar files")
    infos = base.collect_tensors(path)
    return {(k[:-len(INT8_SUFFIX)] + ".weight" if k.endswith(INT8_SUFFIX) else k): v for k, v in infos.items()}


def _config_json(path: Path) -> dict:
    folder = path if path.is_dir() else path.parent
    config = folder / "config.json"
    if not (path.is_dir() or path.name.endswith(".index.json")) or not config.is_file():
        return {}
    try:
        return json.loads(config.read_text())
    except ValueError as err:
        raise ValueError(f"{config}: invalid JSON ({err})") from None


def infer_avatar_config(infos: dict, config_json: dict | None = None) -> dict:
    """``LongCatAvatarDiT`` constructor kwargs from tensor shapes (and the folder's config.json
    for the split of the audio features into layers × channels when it is not a known version)."""
    base.check_is_longcat(infos)
    if not is_avatar(infos):
        raise ValueError("not a LongCat-Video-Avatar checkpoint (no audio layers): load it with "
                         "'Load LongCat-Video Model'")
    config = base.infer_config(infos)
    shape = {k: tuple(v.shape) for k, v in infos.items()}
    intermediate, window_features = shape["audio_proj.proj1.weight"]
    output_dim = shape["blocks.0.audio_cross_attn.kv_linear.weight"][1]
    features = window_features // 5
    known = {layers * channels: (layers, channels) for layers, channels, _ in VERSIONS.values()}
    config_json = config_json or {}
    if "audio_block" in config_json and "audio_channel" in config_json:
        layers, channels = int(config_json["audio_block"]), int(config_json["audio_channel"])
    elif features in known:
        layers, channels = known[features]
    else:
        raise ValueError(f"audio projector takes {features} features per audio frame, neither Avatar 1.0 "
                         "(12x768) nor 1.5 (5x1280), and no config.json gives audio_block/audio_channel")
    config.update(
        audio_block=layers, audio_channel=channels, intermediate_dim=intermediate, output_dim=output_dim,
        context_tokens=shape["audio_proj.proj3.weight"][0] // output_dim,
        audio_prenorm="blocks.0.pre_audio_crs_attn_norm.weight" in infos,
        class_range=int(config_json.get("class_range", 24)), class_interval=int(config_json.get("class_interval", 4)),
        text_tokens_zero_pad=bool(config_json.get("text_tokens_zero_pad", True)),
    )
    return config


def avatar_version(config: dict) -> str:
    """"1.0" or "1.5" from the audio feature shape, else "custom LxC"."""
    for version, (layers, channels, _) in VERSIONS.items():
        if (config["audio_block"], config["audio_channel"]) == (layers, channels):
            return version
    return f"custom {config['audio_block']}x{config['audio_channel']}"


def check_avatar_keys(infos: dict, config: dict) -> None:
    """Raise ValueError naming missing, unexpected and wrong-shaped keys (as ``weights.check_keys``)."""
    model = LongCatAvatarDiT(**config, device="meta")
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in infos.items()}
    for key in filter(is_scale_key, have):
        if len(want.get(weight_key(key), ())) == 2:
            want[key] = (want[weight_key(key)][0],)
    problems = []
    if missing := [k for k in want if k not in have and not is_scale_key(k)]:
        problems.append(f"missing {len(missing)}: {base._first(missing)}")
    if unexpected := [k for k in have if k not in want]:
        problems.append(f"unexpected {len(unexpected)}: {base._first(unexpected)}")
    if wrong := [f"{k} {have[k]} != {want[k]}" for k in want if k in have and have[k] != want[k]]:
        problems.append(f"wrong shape {len(wrong)}: {'; '.join(wrong[:5])}")
    if problems:
        raise ValueError("Avatar checkpoint does not match the model: " + " | ".join(problems))


def inspect_avatar_checkpoint(path) -> tuple[dict, dict]:
    """``({official key: TensorInfo}, Avatar DiT config)`` from the headers alone (and config.json)."""
    path = Path(path)
    infos = _collect(path)
    config = infer_avatar_config(infos, _config_json(path))
    check_avatar_keys(infos, config)
    return infos, config


def read_avatar_tensors(infos: dict, dtype: torch.dtype | None = None, device="cpu") -> dict:
    """State dict of ``infos``; INT8 weights dequantized to ``dtype`` (default bf16) as
    ``int8.to(dtype) · scale.to(dtype)``, the official layer's per-call arithmetic."""
    int8 = {k for k, v in infos.items() if v.dtype == torch.int8}
    if dtype in base.FP8_DTYPES and int8:
        raise ValueError("the INT8 Avatar copy loads as bf16/fp16/fp32 (its int8 weights are dequantized); "
                         "pick one of those weight dtypes")
    plain = {k: v for k, v in infos.items() if k not in int8 and not (is_scale_key(k) and weight_key(k) in int8)}
    state = base.read_tensors(plain, dtype, device)
    if int8:
        target = dtype or torch.bfloat16
        state = {k: (v.to(target) if v.is_floating_point() and dtype is None else v) for k, v in state.items()}
        with _Opener() as opener:
            for key in sorted(int8):
                q = opener.get(infos[key])
                scale = opener.get(infos[scale_key(key)])
                state[key] = q.to(target) * scale.to(target)[:, None]
    return state


class _Opener:
    def __init__(self):
        self.handles = {}

    def __enter__(self):
        return self

    def get(self, info):
        if info.file not in self.handles:
            self.handles[info.file] = safe_open(str(info.file), framework="pt", device="cpu").__enter__()
        return self.handles[info.file].get_tensor(info.name)

    def __exit__(self, *exc):
        for handle in self.handles.values():
            handle.__exit__(*exc)


def load_avatar_dit(path, dtype: torch.dtype | None = None, device="cpu", operations=None,
                    attention=None, block_kernels="auto") -> LongCatAvatarDiT:
    """Build a ``LongCatAvatarDiT`` from weights (meta skeleton, tensors assigned; no random init).

    block_kernels: "auto" / "fused" / "torch" or a kernels object (``longcat.block_kernels``)."""
    infos, config = inspect_avatar_checkpoint(path)
    state = read_avatar_tensors(infos, dtype, device)
    kernels = resolve_block_kernels(block_kernels, torch.device(device), dtype, config)
    model = LongCatAvatarDiT(**config, attention=attention, device="meta", block_kernels=kernels,
                             operations=cast_ops if operations is None else operations)
    model.load_state_dict(state, strict=True, assign=True)
    return model.requires_grad_(False).eval()
