"""Write the tiny test models the real-ComfyUI tests load (run as a script, not collected).

    python harness/tiny_models.py <models dir>

Run with the ComfyUI venv from the ComfyUI tree (cwd = COMFYUI_DIR): the VAE is ComfyUI's own
``comfy.ldm.wan.vae.WanVAE`` at full Wan 2.1 size with random weights, so ``VAELoader`` detects
it exactly as it detects the real file. Writes:

* diffusion_models/longcat_tiny.safetensors: a LongCat DiT with official keys, hidden 64,
  2 blocks, 2 heads, caption_channels 4096 (it takes real umT5-shaped context).
* vae/wan_2.1_vae_random.safetensors: random full-size Wan 2.1 VAE (bf16, ~250 MB).
* loras/longcat_tiny_official_lora.safetensors: official-format LoRA (split qkv up-projection,
  alpha_scale) for the tiny DiT; loras/longcat_tiny_comfy_lora.safetensors: the same deltas in
  ComfyUI's generic ``diffusion_model.*`` format (for LoraLoaderModelOnly).
* diffusion_models/longcat_avatar_tiny/: a tiny Avatar DiT as an official sharded folder
  (index, two shards, config.json with the 3x8 audio features).
* diffusion_models/LongCat_TI2V_comfy_fp8_e4m3fn_scaled_KJ_tiny.safetensors and
  loras/LongCat_distill_lora_tiny_KJ.safetensors: the same DiT in Kijai's scaled fp8 layout and a
  LoRA in Kijai's layout (``harness/kijai_layout.py``).
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

DIT_CONFIG = dict(hidden_size=64, depth=2, num_heads=2, caption_channels=4096,
                  adaln_tembed_dim=32, frequency_embedding_size=32)
DIT_FILE = "longcat_tiny.safetensors"
VAE_FILE = "wan_2.1_vae_random.safetensors"
OFFICIAL_LORA_FILE = "longcat_tiny_official_lora.safetensors"
COMFY_LORA_FILE = "longcat_tiny_comfy_lora.safetensors"
KIJAI_FP8_DIT_FILE = "LongCat_TI2V_comfy_fp8_e4m3fn_scaled_KJ_tiny.safetensors"
KIJAI_LORA_FILE = "LongCat_distill_lora_tiny_KJ.safetensors"
AVATAR_FOLDER = "longcat_avatar_tiny"
AVATAR_AUDIO = (3, 8)  # audio layers x channels of the tiny Avatar DiT
RANK = 2
# File names the tests (and the workflow tests) put into prompts.
TINY = {"dit": DIT_FILE, "vae": VAE_FILE, "official_lora": OFFICIAL_LORA_FILE,
        "comfy_lora": COMFY_LORA_FILE, "kijai_fp8_dit": KIJAI_FP8_DIT_FILE,
        "kijai_lora": KIJAI_LORA_FILE, "avatar": AVATAR_FOLDER + "/"}


def _pack():
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    from _standalone import import_pack

    return import_pack()


def write_dit(folder: Path) -> dict:
    """Tiny random DiT with official key names → its state dict."""
    _pack()
    from longcat_pack.longcat.dit import LongCatVideoDiT

    torch.manual_seed(0)
    dit = LongCatVideoDiT(**DIT_CONFIG)
    state = {k: v.detach().contiguous() for k, v in dit.state_dict().items()}
    save_file(state, str(folder / DIT_FILE))
    return state


def write_loras(folder: Path, state: dict) -> None:
    """Official-format LoRA on block 0's fused qkv and proj, and the same in ComfyUI format."""
    gen = torch.Generator().manual_seed(1)
    official, comfy = {}, {}
    for path, parts in (("blocks.0.attn.qkv", 3), ("blocks.0.attn.proj", 1)):
        out, inp = state[path + ".weight"].shape
        name = "lora___lorahyphen___" + path.replace(".", "___lorahyphen___")
        down = torch.randn(parts * RANK, inp, generator=gen) * 0.1
        ups = [torch.randn(out // parts, RANK, generator=gen) * 0.1 for _ in range(parts)]
        official[name + ".lora_down.weight"] = down
        if parts == 1:
            official[name + ".lora_up.weight"] = ups[0]
        for i, up in enumerate(ups if parts > 1 else []):
            official[f"{name}.lora_up.blocks.{i}.weight"] = up
        official[name + ".alpha_scale"] = torch.tensor(0.5)
        comfy[f"diffusion_model.{path}.lora_up.weight"] = torch.block_diag(*ups)
        comfy[f"diffusion_model.{path}.lora_down.weight"] = down
        comfy[f"diffusion_model.{path}.alpha"] = torch.tensor(0.5 * parts * RANK)
    save_file(official, str(folder / OFFICIAL_LORA_FILE))
    save_file(comfy, str(folder / COMFY_LORA_FILE))


def write_kijai(models: Path, state: dict) -> None:
    """The tiny DiT as Kijai's scaled fp8 file, and a Kijai-layout LoRA on q/k/v, cross k/v and more."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from kijai_layout import kijai_lora, to_kijai_scaled_fp8

    fp8, _ = to_kijai_scaled_fp8(state)
    save_file({k: v.contiguous() for k, v in fp8.items()}, str(models / "diffusion_models" / KIJAI_FP8_DIT_FILE))
    shapes = {k: tuple(v.shape) for k, v in state.items() if v.ndim == 2}
    targets = [f"blocks.{b}.{m}" for b in range(DIT_CONFIG["depth"]) for m in (
        "self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.k", "cross_attn.v", "ffn.w2")]
    lora, _ = kijai_lora(shapes, targets, rank=RANK, seed=2)
    save_file(lora, str(models / "loras" / KIJAI_LORA_FILE))


def write_avatar(folder: Path) -> None:
    """Tiny Avatar DiT (16 latent channels, umT5-wide captions) as an official sharded folder."""
    import json

    _pack()
    from longcat_pack.longcat.avatar.dit import LongCatAvatarDiT

    torch.manual_seed(3)
    config = {**DIT_CONFIG, "audio_block": AVATAR_AUDIO[0], "audio_channel": AVATAR_AUDIO[1],
              "intermediate_dim": 16, "output_dim": 16, "context_tokens": 4}
    state = {k: v.detach().contiguous() for k, v in LongCatAvatarDiT(**config).state_dict().items()}
    folder.mkdir()
    keys = sorted(state)
    weight_map = {}
    for i, part in enumerate((keys[:len(keys) // 2], keys[len(keys) // 2:]), 1):
        name = f"diffusion_pytorch_model-{i:05d}-of-00002.safetensors"
        save_file({k: state[k] for k in part}, str(folder / name))
        weight_map.update(dict.fromkeys(part, name))
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({"audio_block": AVATAR_AUDIO[0],
                                                    "audio_channel": AVATAR_AUDIO[1]}))


def write_vae(folder: Path) -> None:
    """Random full-size Wan 2.1 VAE built from ComfyUI's own class (needs cwd = COMFYUI_DIR)."""
    sys.path.insert(0, ".")
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before comfy.model_management reads the device
    from comfy.ldm.wan.vae import WanVAE

    torch.manual_seed(0)
    vae = WanVAE(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                 temperal_downsample=[False, True, True], dropout=0.0)
    # comfy.ops layers skip weight init: give convs a variance-preserving random init; RMS norm
    # gammas (already ones) and biases (zeroed) keep activations bounded.
    with torch.no_grad():
        for name, param in vae.named_parameters():
            if param.dim() > 1:
                fan_in = param[0].numel()
                param.normal_(0.0, fan_in ** -0.5)
            elif not name.endswith("gamma"):
                param.zero_()
    state = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in vae.state_dict().items()}
    save_file(state, str(folder / VAE_FILE))


def main(models: Path) -> None:
    for sub in ("diffusion_models", "vae", "loras"):
        (models / sub).mkdir(parents=True, exist_ok=True)
    state = write_dit(models / "diffusion_models")
    write_loras(models / "loras", state)
    write_kijai(models, state)
    write_avatar(models / "diffusion_models" / AVATAR_FOLDER)
    write_vae(models / "vae")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
