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
* saved videos go under ``output/<prefix>/``.

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
    workflow: str
    main_node: str  # the node whose progress gives s/step
    guidance: bool  # two DiT passes per step


STAGES = {
    "distill": Stage("longcat_t2v_distill_16step.json", "LongCatSampler", False),
    "cfg480": Stage("longcat_t2v_480p.json", "LongCatSampler", True),
    "refine": Stage("longcat_t2v_refine_720p_bsa.json", "LongCatRefine720p", False),
    "continuation": Stage("longcat_video_continuation.json", "LongCatSampler", True),
}
TEXT_TOKENS = 64  # real (non-padded) tokens of the stand-in text encoding
# --tiny: the sizes of tests/comfyui/test_workflows.py (the tiny DiT on the CPU).
TINY_SIZES = {"EmptyHunyuanLatentVideo": {"width": 64, "height": 32, "length": 9},
              "LongCatRefine720p": {"width": 128, "height": 64},
              "LongCatContinueVideo": {"width": 64, "height": 32, "length": 17, "num_cond_frames": 5}}
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
    workflow = json.loads((ROOT / "workflows" / spec.workflow).read_text())
    prompt = workflow_checks.to_api_prompt(workflow, object_info)
    notes = {"workflow": spec.workflow, "steps": steps}
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
            inputs["filename_prefix"] = f"{prefix}/{stage}_{node_id}"
        if tiny and kind in TINY_SIZES:
            inputs.update(TINY_SIZES[kind])
        if kind in LATENT_OUTPUT:
            prompt[str(SAVE_LATENT_ID + int(node_id))] = {
                "class_type": "SaveLatent",
                "inputs": {"samples": [node_id, LATENT_OUTPUT[kind]],
                           "filename_prefix": f"{prefix}/{stage}_{node_id}"}}
    return prompt, notes


def main_node_id(prompt: dict, stage: str) -> str:
    """Id of the stage's one sampler (or refine) node, whose progress times the steps."""
    kind = STAGES[stage].main_node
    found = [i for i, n in prompt.items() if n["class_type"] == kind]
    if len(found) != 1:
        raise ValueError(f"stage {stage}: expected one {kind} node, found {found}")
    return found[0]
