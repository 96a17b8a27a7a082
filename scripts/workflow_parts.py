"""Pieces the bundled workflows share: model files and links, prompts, notes, and the node
groups each stage is made of (used by ``build_workflows.py``)."""

from vram_results import measured_notes
from workflow_builder import Column, Workflow

HF_LONGCAT = "https://huggingface.co/meituan-longcat/LongCat-Video"
HF_KIJAI = "https://huggingface.co/Kijai/LongCat-Video_comfy"
HF_WAN = "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged"


def _model(repo_url: str, path: str, directory: str) -> dict:
    """A ``properties.models`` entry: the frontend's Missing Models panel offers a Download
    button for it (Hugging Face ``resolve/main`` URL, ComfyUI model folder)."""
    return {"name": path.rsplit("/", 1)[-1], "url": f"{repo_url}/resolve/main/{path}",
            "directory": directory}


# Defaults are files a user can download as they are. The DiT is Kijai's scaled fp8 file: it runs
# 480p on a 24 GB card with --lowvram (measured, README's VRAM table); the bf16 file needs 48 GB.
DIT = _model(HF_KIJAI, "LongCat_TI2V_comfy_fp8_e4m3fn_scaled_KJ.safetensors", "diffusion_models")
DIT_BF16 = _model(HF_KIJAI, "LongCat_TI2V_comfy_bf16.safetensors", "diffusion_models")
DISTILL_LORA = _model(HF_KIJAI, "LongCat_distill_lora_alpha64_bf16.safetensors", "loras")
REFINE_LORA = _model(HF_KIJAI, "LongCat_refinement_lora_rank128_bf16.safetensors", "loras")
UMT5 = _model(HF_WAN, "split_files/text_encoders/umt5_xxl_fp16.safetensors", "text_encoders")
VAE = _model(HF_WAN, "split_files/vae/wan_2.1_vae.safetensors", "vae")
CONVERTED_DIT_FILE = "longcat_video_dit_bf16.safetensors"  # the converter's output, in the note
INPUT_VIDEO = "input_video.mp4"  # the continuation workflow's LoadVideo file, in ComfyUI/input/

# The official demos' negative prompt, used with guidance 4.
NEGATIVE = ("Bright tones, overexposed, static, blurred details, subtitles, style, works, "
            "paintings, images, static, overall gray, worst quality, low quality, JPEG "
            "compression residue, ugly, incomplete, extra fingers, poorly drawn hands, poorly "
            "drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still picture, "
            "messy background, three legs, many people in the background, walking backwards")
PROMPT = ("A golden retriever runs along a sunlit beach at sunset, waves rolling onto the sand, "
          "the camera tracking alongside at a low angle. Warm light, realistic, cinematic.")
I2V_PROMPT = ("The woman in the picture slowly turns her head toward the camera and smiles, "
              "her hair moving in a light breeze. Natural light, realistic.")
VC_PROMPT = ("The scene continues: the camera keeps moving forward as the subject walks on, "
             "same lighting and style as the input video.")
STORY = (
    ("A woman in a red coat walks through a snowy pine forest in the morning, snow crunching "
     "under her boots, the camera following from behind."),
    "She stops and looks up as a gust of wind shakes snow from the branches around her.",
    "She reaches the edge of a frozen lake and carefully steps onto the ice.",
    "The camera rises and pulls back, revealing the whole frozen lake surrounded by forest.",
)
SEED = 42  # the official demos' seed (42 + rank)

DIT_NOTE = f"""## Model files

The loaders name files you can download as they are; ComfyUI's Missing Models panel offers a
**Download** button for each one (or fetch them from the links below into the folder shown).

* **DiT** ([Kijai/LongCat-Video_comfy]({HF_KIJAI})): `{DIT["name"]}` (15.5 GB, stays fp8 in
  memory; runs 480p on 24 GB cards with `--lowvram`) in `models/diffusion_models/`. With 48 GB or
  more, [`{DIT_BF16["name"]}`]({DIT_BF16["url"]}) (27.2 GB) is the bf16 alternative: pick it here.
* **LoRAs** (same repository, `models/loras/`): `{DISTILL_LORA["name"]}` (16-step distill) and
  `{REFINE_LORA["name"]}` (720p refinement).
* **umT5-XXL and Wan 2.1 VAE** ([Comfy-Org/Wan_2.1_ComfyUI_repackaged]({HF_WAN})):
  `models/text_encoders/`, `models/vae/`.
* **Official release instead** ([meituan-longcat/LongCat-Video]({HF_LONGCAT})): the DiT ships as
  fp32 shards in `dit/` (~54 GB). Convert once to one bf16 file (27.2 GB):
  `python scripts/convert_longcat.py <LongCat-Video>/dit models/diffusion_models/{CONVERTED_DIT_FILE}`
  (add `--dtype fp8_e4m3fn` for ~13.6 GB), or put (or symlink) the `dit/` folder under
  `models/diffusion_models/` and pick it here. The official `lora/cfg_step_lora.safetensors` and
  `lora/refinement_lora.safetensors` load in the LoRA nodes too.

See `docs/model.md`."""


def vram_note(wf: Workflow, pos, title: str, body: str, height: int = 420) -> None:
    wf.note(pos, f"## {title}\n\n{body}", title="About this workflow", width=460, height=height)


def load_models(wf: Workflow, col: Column) -> dict:
    """DiT, umT5 and VAE loaders stacked in ``col``; returns the nodes by role."""
    dit = col.push(wf.add("LongCatModelLoader", col.next(), {"model_name": DIT["name"]},
                          title="Load LongCat-Video DiT", width=380, models=[DIT]))
    clip = col.push(wf.add("CLIPLoader", col.next(),
                           {"clip_name": UMT5["name"], "type": "wan"}, width=380, models=[UMT5]))
    vae = col.push(wf.add("VAELoader", col.next(), {"vae_name": VAE["name"]}, width=380,
                          models=[VAE]))
    note = col.push(wf.note(col.next(), DIT_NOTE, title="Model files", width=380, height=560))
    wf.group("Models", [dit, clip, vae, note])
    return {"dit": dit, "clip": clip, "vae": vae}


def encode(wf: Workflow, col: Column, clip, text: str, title: str, negative=False):
    color = ("#322", "#533") if negative else ("#232", "#353")
    node = col.push(wf.add("CLIPTextEncode", col.next(), {"text": text}, title=title,
                           width=420, color=color))
    wf.link(clip, node, "clip")
    return node


def lora(wf: Workflow, col: Column, model, spec: dict, title: str):
    node = col.push(wf.add("LongCatLoRA", col.next(), {"lora_name": spec["name"],
                                                        "strength": 1.0},
                           title=title, width=360, models=[spec]))
    wf.link(model, node, "model")
    return node


def sample(wf: Workflow, col: Column, model, positive, latent, mode: str, steps: int,
           guidance: float, negative=None, title="LongCat Sampler"):
    """LongCat Scheduler + LongCat Sampler; returns the sampler node."""
    sched = col.push(wf.add("LongCatScheduler", col.next(),
                            {"mode": mode, "steps": steps, "t_thresh": 0.5, "shift": 12.0}))
    sampler = col.push(wf.add("LongCatSampler", col.next(),
                              {"seed": SEED, "guidance_scale": guidance, "use_kv_cache": True,
                               "offload_kv_cache": "auto"}, title=title))
    wf.link(model, sampler, "model")
    wf.link(positive, sampler, "positive")
    wf.link(latent, sampler, "latent")
    wf.link(sched, sampler, "sigmas")
    if negative is not None:
        wf.link(negative, sampler, "negative")
    return sampler


def save_video(wf: Workflow, col: Column, images, fps: float, prefix: str, title=None):
    video = col.push(wf.add("CreateVideo", col.next(), {"fps": fps}))
    wf.link(images, video, "images")
    save = col.push(wf.add("SaveVideo", col.next(), {"filename_prefix": prefix}, width=420,
                           title=title))
    wf.link(video, save, "video")
    return video, save


def decode(wf: Workflow, col: Column, sampler, vae):
    node = col.push(wf.add("VAEDecode", col.next()))
    wf.link(sampler.out("LATENT"), node, "samples")
    wf.link(vae, node, "vae")
    return node


def bsa(wf: Workflow, col: Column, model, enable: bool = True):
    node = col.push(wf.add("LongCatBSASettings", col.next(),
                           {"enable": enable, "preset": "refine 720p", "sparsity": 0.9375,
                            "cdf_threshold": 0.0, "chunk_q": "4,4,4", "chunk_k": "4,4,4"},
                           title="LongCat BSA Settings" + ("" if enable else " (off)"),
                           width=360))
    wf.link(model, node, "model")
    return node


def refine(wf: Workflow, col: Column, model, vae, positive, frames, title="LongCat Refine 720p",
           num_cond_frames: int = 0):
    node = col.push(wf.add("LongCatRefine720p", col.next(),
                           {"width": 1280, "height": 704, "t_thresh": 0.5,
                            "spatial_refine_only": False, "seed": SEED,
                            "num_cond_frames": num_cond_frames}, title=title, width=360))
    wf.link(model, node, "model")
    wf.link(vae, node, "vae")
    wf.link(positive, node, "positive")
    wf.link(frames, node, "frames")
    return node


def report(wf: Workflow, col: Column, source, title: str):
    node = col.push(wf.add("PreviewAny", col.next(), title=title, width=420))
    wf.link(source, node, "source")
    return node


_HAND_480P = """**VRAM** (measured inside ComfyUI 0.3.64 on an H200 held to 24 / 48 / 80 GB budgets,
random weights: `bench/bench_comfyui_vram.py`): with guidance (batch 2) 6.8 s per step in bf16 at
48 GB (PyTorch peak 32.0 GiB) and 6.7 s in fp8 with `--lowvram` at 24 GB (19.4 GiB), so 50 steps
take about 6 minutes; the 16-step distilled pass takes 3.4 s per step (bf16 or fp8; 3.0 s with
`--fast fp8_matrix_mult`). 24 GB cards run it with the default fp8 DiT file and ComfyUI's
`--lowvram`; 48 GB and larger cards can pick the bf16 file. umT5-XXL fp16 (~11 GB) is needed only
while encoding; ComfyUI offloads it afterwards."""

_HAND_720P = """**Refinement VRAM** (measured inside ComfyUI on an H200 under memory budgets):
704×1280 with 2× frames is 168,960 tokens per forward; with BSA (0.9375) a step takes 9.5 s, one
pass per step (no CFG). PyTorch peak 44.5 GiB in bf16 (80 GB budget), 31.9 GiB in fp8 with
`--lowvram` (48 GB budget). At 24 GB it runs out of memory (fp8, `--lowvram`: the activations
alone need about 19 GiB); refine on a 48 GB or larger card, or try `spatial_refine_only` (half
the tokens; not measured)."""

# From the newest bench results once they come from the current bench (scripts/vram_results.py);
# until then the notes above, written from the 0.3.64 runs.
_MEASURED = measured_notes()
VRAM_480P = _MEASURED["480p"] if _MEASURED else _HAND_480P
VRAM_720P = _MEASURED["720p"] if _MEASURED else _HAND_720P
VRAM_CONTINUATION = _MEASURED["continuation"] if _MEASURED else (
    "The KV cache takes ~4.6 GB at 480p in bf16; `offload_kv_cache` `auto` (the default) keeps it "
    "on the GPU when it fits next to the sampling, else in pinned CPU RAM, copied in one block "
    "ahead. Measured before that option: 6.0 s per step in bf16 at a 48 GB budget (peak 38.9 "
    "GiB); at 24 GB (fp8, `--lowvram`) it ran out of memory with the cache on the GPU.")
