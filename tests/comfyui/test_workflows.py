"""The bundled workflows on a real ComfyUI server: valid, accepted by ``/prompt``, and two of
them run end to end on tiny models.

* Every ``workflows/*.json`` is checked against the live ``/object_info``, converted to API
  format with comfy-cli's converter (``comfy_cli.workflow_to_api``, PyPI ``comfy-cli``) and
  posted to ``/prompt``. Stand-in model files with the workflow's names are empty, so ComfyUI
  validates the whole prompt (200, no node errors) and then stops at the first loader it
  executes: nothing heavy runs.
* T2V -> refine-with-BSA and continuation run end to end: CLIPLoader/CLIPTextEncode are swapped
  for the test-only ``LongCatTestTextEncode``, the loaders get the tiny models of
  ``harness/tiny_models.py`` (tiny LongCat DiT, random full-size Wan 2.1 VAE, official-format LoRA), and
  sizes shrink; the saved videos are decoded and their frame counts and sizes checked.
"""

import importlib.util
import json
import subprocess
from pathlib import Path

import availability
import pytest
from comfy_server import PACK_FOLDER, comfy_python
from tiny_models import TINY

pytestmark = pytest.mark.comfyui

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
LOADERS = {"CLIPLoader", "VAELoader", "LongCatModelLoader", "LongCatLoRA"}
LOADERS |= {"LongCatAvatarModelLoader", "AudioEncoderLoader"}  # the Avatar workflows
STAGE1 = {"width": 64, "height": 32, "length": 9}  # latent 3x4x8
REFINE = {"width": 128, "height": 64}  # multiples of 64; 2x frames -> 18
IMAGE_FILE, VIDEO_FILE = "example.png", "input_video.mp4"
# Written with ComfyUI's own Python (PIL, PyAV): the PNG start image and a 34-frame clip at
# 30 fps, which the continuation workflow resamples to 15 fps (17 frames), as the official demo.
MAKE_MEDIA = """
import sys, av, numpy as np
from PIL import Image
folder = sys.argv[1]
Image.fromarray(np.full((48, 80, 3), (200, 120, 40), np.uint8)).save(folder + "/example.png")
out = av.open(folder + "/input_video.mp4", "w")
stream = out.add_stream("libx264", rate=30)
stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
for i in range(34):
    frame = np.zeros((32, 64, 3), np.uint8); frame[:, : 4 * i % 64] = (30, 160, 90)
    out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
out.mux(stream.encode()); out.close()
"""
PROBE_VIDEO = """
import sys, json, av
with av.open(sys.argv[1]) as c:
    s = c.streams.video[0]
    print(json.dumps([sum(1 for _ in c.decode(s)), s.width, s.height]))
"""


def _workflow_checks():
    path = ROOT / "harness" / "workflow_checks.py"
    spec = importlib.util.spec_from_file_location("_wf_checks_live", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


wc = _workflow_checks()


@pytest.fixture(scope="module")
def convert():
    converter = availability.import_or_unavailable(
        "comfy_cli.workflow_to_api", "`pip install comfy-cli` in the Python running pytest")
    return converter.convert_ui_to_api


@pytest.fixture(scope="module")
def stand_ins(comfy_server):
    """Empty model files under every name the workflows use, and real input media."""
    models = comfy_server.base_dir / "models"
    for path in WORKFLOWS:
        for node in json.loads(path.read_text())["nodes"]:
            for model in (node.get("properties") or {}).get("models", []):
                target = models / model["directory"] / model["name"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.touch()
    inputs = comfy_server.base_dir / "input"
    inputs.mkdir(exist_ok=True)
    subprocess.run([comfy_python(), "-c", MAKE_MEDIA, str(inputs)], check=True)
    _avatar_stand_ins(models, inputs)
    return comfy_server


def _avatar_stand_ins(models: Path, inputs: Path) -> None:
    """The Avatar workflows' DiT folder (an empty official index, so the loader lists it) and
    their speech files."""
    import tiny_audio

    folder = models / "diffusion_models" / "LongCat-Video-Avatar-1.5" / "base_model"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "diffusion_pytorch_model.safetensors.index.json").touch()
    tiny_audio.write_wavs(str(inputs))


def test_bundled_workflows_found():
    assert len(WORKFLOWS) == 7 + 3, f"expected 10 bundled workflows, found {[p.name for p in WORKFLOWS]}"


def test_workflows_served_as_templates(comfy_server):
    """ComfyUI lists workflows/ of the pack in its template browser and serves the files."""
    listed = comfy_server.get("/workflow_templates").get(PACK_FOLDER, [])
    assert sorted(listed) == sorted(p.stem for p in WORKFLOWS)
    served = comfy_server.get(f"/api/workflow_templates/{PACK_FOLDER}/{WORKFLOWS[0].name}")
    assert served == json.loads(WORKFLOWS[0].read_text())


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_valid_against_live_server(path, object_info):
    problems = wc.check_workflow(json.loads(path.read_text()), object_info)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_accepted_by_prompt(path, stand_ins, object_info, convert):
    workflow = json.loads(path.read_text())
    prompt = convert(workflow, object_info)
    executable = [n for n in workflow["nodes"] if n["type"] not in wc.FRONTEND_ONLY]
    assert sorted(prompt) == sorted(str(n["id"]) for n in executable)
    status, body = stand_ins.post("/prompt", {"prompt": prompt, "client_id": "wf-tests"})
    assert status == 200 and not body.get("node_errors"), json.dumps(body, indent=1)
    entry = stand_ins.wait(body["prompt_id"], timeout=300)
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    # The empty stand-in files make the first loader fail: validation passed, nothing heavy ran.
    assert len(errors) == 1 and errors[0]["node_type"] in LOADERS, json.dumps(errors, indent=1)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_our_api_conversion_equals_comfy_cli(path, object_info, convert):
    """``workflow_checks.to_api_prompt`` (the VRAM bench's, no comfy-cli on the GPU machine)
    posts what comfy-cli's converter (the frontend's Export (API)) makes of the workflow."""
    workflow = json.loads(path.read_text())
    def strip(prompt):
        return {k: (v["class_type"], v["inputs"]) for k, v in prompt.items()}
    assert strip(wc.to_api_prompt(workflow, object_info)) == strip(convert(workflow, object_info))


def _tiny(prompt: dict, overrides: dict) -> dict:
    """Swap umT5 for the test text node, point loaders at the tiny models, apply size overrides.

    ``overrides`` maps class_type -> inputs to set; every class named must be in the prompt.
    """
    out = {}
    for node_id, node in prompt.items():
        kind, inputs = node["class_type"], dict(node["inputs"])
        if kind == "CLIPLoader":
            continue
        if kind == "CLIPTextEncode":
            kind, inputs = "LongCatTestTextEncode", {"text": inputs["text"], "tokens": 8}
        inputs.update({"LongCatModelLoader": {"model_name": TINY["dit"]},
                       "LongCatLoRA": {"lora_name": TINY["official_lora"]},
                       "VAELoader": {"vae_name": TINY["vae"]}}.get(kind, {}))
        inputs.update(overrides.get(kind, {}))
        out[node_id] = {**node, "class_type": kind, "inputs": inputs}
    missing = set(overrides) - {n["class_type"] for n in out.values()}
    assert not missing, f"workflow lacks {missing}"
    return out


def _videos(server, entry: dict) -> dict:
    """SaveVideo node id -> [frames, width, height] of the file it wrote."""
    found = {}
    for node_id, output in entry["outputs"].items():
        for item in output.get("images", []):
            if item["filename"].endswith(".mp4"):
                path = server.base_dir / "output" / item["subfolder"] / item["filename"]
                probe = subprocess.run([comfy_python(), "-c", PROBE_VIDEO, str(path)],
                                       check=True, capture_output=True, text=True)
                found[node_id] = json.loads(probe.stdout)
    return found


def _reports(entry: dict) -> list[str]:
    return ["".join(o["text"]) for o in entry["outputs"].values() if "text" in o]


def test_t2v_refine_bsa_runs_end_to_end(stand_ins, object_info, convert):
    workflow = json.loads((ROOT / "workflows" / "longcat_t2v_refine_720p_bsa.json").read_text())
    prompt = _tiny(convert(workflow, object_info), {
        "EmptyHunyuanLatentVideo": STAGE1, "LongCatRefine720p": REFINE,
        "SaveVideo": {"filename_prefix": "wf_test/t2v_refine"}})
    entry = stand_ins.run(prompt, timeout=900)
    videos = sorted(_videos(stand_ins, entry).values())
    assert videos == [[9, 64, 32], [18, 128, 64]], videos
    reports = _reports(entry)
    assert reports and "sparse self-attention calls" in reports[0], reports


def test_distill_workflow_runs_with_kijai_files(stand_ins, object_info, convert):
    """The bundled distill workflow with Kijai's scaled fp8 DiT and a Kijai-layout LoRA picked."""
    workflow = json.loads((ROOT / "workflows" / "longcat_t2v_distill_16step.json").read_text())
    prompt = _tiny(convert(workflow, object_info), {
        "LongCatModelLoader": {"model_name": TINY["kijai_fp8_dit"]},
        "LongCatLoRA": {"lora_name": TINY["kijai_lora"]}, "EmptyHunyuanLatentVideo": STAGE1,
        "SaveVideo": {"filename_prefix": "wf_test/distill_kijai"}})
    entry = stand_ins.run(prompt, timeout=900)
    assert list(_videos(stand_ins, entry).values()) == [[9, 64, 32]]


def test_continuation_runs_end_to_end(stand_ins, object_info, convert):
    workflow = json.loads((ROOT / "workflows" / "longcat_video_continuation.json").read_text())
    prompt = _tiny(convert(workflow, object_info), {
        "LongCatContinueVideo": {"width": 64, "height": 32, "length": 17, "num_cond_frames": 5},
        "LongCatScheduler": {"steps": 8},
        "SaveVideo": {"filename_prefix": "wf_test/continuation"}})
    entry = stand_ins.run(prompt, timeout=900)
    assert list(_videos(stand_ins, entry).values()) == [[17, 64, 32]]
    # The 30 fps input was resampled to 15 fps before its last 5 frames were taken.
    assert "input at 30 fps, keeping 1 frame in 2 (15 fps): 17 frames" in stand_ins.log_text()


def test_continuation_input_too_short_after_resampling(stand_ins, object_info, convert):
    """A clip with fewer frames than num_cond_frames once resampled: one clear error, no crash."""
    workflow = json.loads((ROOT / "workflows" / "longcat_video_continuation.json").read_text())
    prompt = _tiny(convert(workflow, object_info), {
        "LongCatContinueVideo": {"width": 64, "height": 32, "length": 17, "num_cond_frames": 18,
                                 "target_fps": 15.0},
        "SaveVideo": {"filename_prefix": "wf_test/continuation_short"}})
    status, body = stand_ins.post("/prompt", {"prompt": prompt, "client_id": "wf-tests"})
    assert status == 200, body
    entry = stand_ins.wait(body["prompt_id"], timeout=300)
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert len(errors) == 1 and errors[0]["node_type"] == "LongCatContinueVideo", errors
    assert ("video has 17 frames after resampling, fewer than num_cond_frames=18"
            in errors[0]["exception_message"]), errors
