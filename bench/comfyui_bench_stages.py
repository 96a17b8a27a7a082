"""The bench's stages: API prompts built from the bundled workflows, as a user queues them.

Each stage is one bundled workflow converted to API format against the live ``/object_info``
(``harness/workflow_checks.to_api_prompt``), then changed only where the bench must:

* the umT5 text encoder (CLIPLoader + CLIPTextEncode) is replaced by the test-only
  ``LongCatTestTextEncode`` (same CONDITIONING shape, ``[1, 512, 4096]``);
* the loaders point at the random files (``comfyui_bench_models``), with the case's weight dtype;
* steps are cut: the Scheduler's steps, the continuation's ``enhance_hf`` (whose 10-step tail
  is fixed) sampled with the ``normal`` schedule instead, and the refine node's ``t_thresh`` set
  so the 50-step refine list has the wanted number of steps; frame counts and sizes stay;
* a ``SaveLatent`` after every sampler and refine node, for the output comparisons;
* ``SaveVideo`` becomes ``PreviewAny`` of the same video (the VAE decode still runs; no mp4 is
  written: 0.33's SaveVideo has a dynamic format widget, and encoding is not what is measured).

Stage ``refine`` is the whole text-to-video + refine workflow: when ``distill`` ran before on the
same server with the same steps, ComfyUI's cache serves stage 1 and only the refinement runs.
"""

import json
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "harness"))
sys.path.insert(0, str(ROOT))
import workflow_checks

from _standalone import import_pack

import_pack()
from longcat_pack.longcat.schedules import refine_sigmas


@dataclass(frozen=True)
class Stage:
    workflow: str | None  # None: a prompt of stock nodes (build_prompt)
    main_node: str  # the node whose progress gives s/step (or whose seconds time the stage)
    guidance: bool  # two DiT passes per step


STAGES = {
    "distill": Stage("longcat_t2v_distill_16step.json", "LongCatSampler", False),
    "cfg480": Stage("longcat_t2v_480p.json", "LongCatSampler", True),
    "refine": Stage("longcat_t2v_refine_720p_bsa.json", "LongCatRefine720p", False),
    "continuation": Stage("longcat_video_continuation.json", "LongCatSampler", True),
    # The Wan 2.1 VAE decoding a refined video's latent: 704×1280, 93 frames → 2× frames after
    # refinement are decoded by the refine node itself; this is the stock VAEDecode a workflow
    # ends with (ComfyUI retries tiled when it runs out of memory: log vae_tiled_fallback).
    "vae720": Stage(None, "VAEDecode", False),
    # One long-video segment: the long-video workflow cut to the first clip and one continuation
    # segment (KV cache, placed automatically), without the refinement.
    "long_segment": Stage("longcat_long_video_multi_prompt.json", "LongCatLongVideo", True),
}
SCHEDULER_ID = "900"  # the long_segment stage's added scheduler
VAE_SIZE = {"width": 1280, "height": 704, "length": 93}
TINY_VAE_SIZE = {"width": 64, "height": 32, "length": 9}
TEXT_TOKENS = 64  # real (non-padded) tokens of the stand-in text encoding
# --tiny: the sizes of tests/comfyui/test_workflows.py (the tiny DiT on the CPU).
TINY_SIZES = {"EmptyHunyuanLatentVideo": {"width": 64, "height": 32, "length": 9},
              "LongCatRefine720p": {"width": 128, "height": 64},
              "LongCatContinueVideo": {"width": 64, "height": 32, "length": 17, "num_cond_frames": 5},
              "LongCatLongVideo": {"width": 64, "height": 32, "num_frames": 17, "num_cond_frames": 5}}
LATENT_OUTPUT = {"LongCatSampler": 0, "LongCatRefine720p": 1}
SAVE_LATENT_ID = 1000  # SaveLatent of node n gets id 1000 + n


def refine_t_thresh(steps: int) -> float:
    """A two-decimal ``t_thresh`` whose refine schedule (50-step list) has ``steps`` DiT passes."""
    for hundredths in range(1, 101):
        t = hundredths / 100
        if len(refine_sigmas(t_thresh=t)) - 1 == steps:
            return t
    raise ValueError(f"no t_thresh gives {steps} refine steps")


def build_prompt(stage: str, object_info: dict, dit_file: str, weight_dtype: str, steps: int,
                 refine_steps: int, prefix: str, tiny: bool) -> tuple[dict, dict]:
    """(API prompt, notes) for ``stage``; notes record what was changed from the workflow."""
    spec = STAGES[stage]
    if spec.workflow is None:
        return _vae_prompt(tiny), {"size": TINY_VAE_SIZE if tiny else VAE_SIZE}
    workflow = json.loads((ROOT / "workflows" / spec.workflow).read_text())
    prompt = workflow_checks.to_api_prompt(workflow, object_info)
    notes = {"workflow": spec.workflow, "steps": steps}
    notes["defaults_filled"] = _fill_new_widgets(prompt, object_info)
    for node_id, node in list(prompt.items()):
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "CLIPLoader":
            del prompt[node_id]
        elif kind == "CLIPTextEncode":
            node.update(class_type="LongCatTestTextEncode",
                        inputs={"text": inputs["text"], "tokens": TEXT_TOKENS})
        elif kind == "LongCatModelLoader":
            inputs.update(model_name=dit_file, weight_dtype=weight_dtype)
        elif kind == "LongCatScheduler":
            if inputs["mode"] == "enhance_hf":
                notes["schedule"] = "normal (workflow: enhance_hf, whose 10-step tail is fixed)"
                inputs["mode"] = "normal"
            inputs["steps"] = steps
        elif kind == "LongCatRefine720p":
            inputs["t_thresh"] = notes["refine_t_thresh"] = refine_t_thresh(refine_steps)
            notes["refine_steps"] = refine_steps
        elif kind == "SaveVideo":
            # PreviewAny keeps the decode that feeds it; 0.33's SaveVideo takes a dynamic format
            # widget this conversion does not fill, and writing the mp4 is not what is measured.
            node.update(class_type="PreviewAny", inputs={"source": inputs["video"]})
            notes["save_video"] = "replaced by PreviewAny"
        elif kind == "LongCatLongVideo":
            # One prompt for every clip, 1 segment, short schedules, no refinement.
            encoders = ("CLIPTextEncode", "LongCatTestTextEncode")  # replaced or not yet
            first_prompt = min((i for i, n in prompt.items() if n["class_type"] in encoders), key=int)
            inputs.update(num_segments=1, prompts=[first_prompt, 0], t2v_sigmas=[SCHEDULER_ID, 0],
                          vc_sigmas=[SCHEDULER_ID, 0])
            inputs.pop("refine_model", None)
            inputs.pop("refine_prompt", None)
            prompt[SCHEDULER_ID] = {"class_type": "LongCatScheduler",
                                    "inputs": {"mode": "normal", "steps": steps, "t_thresh": 0.5, "shift": 12.0}}
            notes["long_video"] = "1 segment, t2v and segment sampled with normal schedules, no refinement"
        if tiny and kind in TINY_SIZES:
            inputs.update(TINY_SIZES[kind])
        if kind in LATENT_OUTPUT:
            prompt[str(SAVE_LATENT_ID + int(node_id))] = {
                "class_type": "SaveLatent",
                "inputs": {"samples": [node_id, LATENT_OUTPUT[kind]],
                           "filename_prefix": f"{prefix}/{stage}_{node_id}"}}
    return prompt, notes


def _vae_prompt(tiny: bool) -> dict:
    """Stock nodes only: an empty video latent at the refine size decoded by the Wan 2.1 VAE
    (what a workflow's last VAEDecode of a 720p video costs); PreviewAny is the output node."""
    from comfyui_bench_models import VAE_FILE

    size = TINY_VAE_SIZE if tiny else VAE_SIZE
    return {"1": {"class_type": "VAELoader", "inputs": {"vae_name": VAE_FILE}},
            "2": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {**size, "batch_size": 1}},
            "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 0]}},
            "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}}}


def _fill_new_widgets(prompt: dict, object_info: dict) -> list:
    """Widgets the server has but the workflow predates (e.g. 0.33's ``CreateVideo.bit_depth``)
    get the server's default, as the frontend gives them when it loads the workflow."""
    filled = []
    for node_id, node in prompt.items():
        spec = object_info[node["class_type"]]["input"]
        for section in ("required", "optional"):
            for name, entry in spec.get(section, {}).items():
                opts = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
                if name in node["inputs"] and node["inputs"][name] is None and "default" in opts:
                    node["inputs"][name] = opts["default"]
                    filled.append(f"{node['class_type']}.{name}")
    return filled


def main_node_id(prompt: dict, stage: str) -> str:
    """Id of the stage's one sampler (or refine) node, whose progress times the steps."""
    kind = STAGES[stage].main_node
    found = [i for i, n in prompt.items() if n["class_type"] == kind]
    if len(found) != 1:
        raise ValueError(f"stage {stage}: expected one {kind} node, found {found}")
    return found[0]
