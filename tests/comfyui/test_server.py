"""A real ComfyUI server loads the pack, lists our nodes as recorded, and runs them end to end.

Prompts are API format, built here; models are the tiny ones from ``tiny_models.py``.
"""

import json
import sys
import time
from pathlib import Path

import pytest
from comfy_drift import node_info_changes
from comfy_server import PACK_FOLDER, our_node_info, worker_pids
from tiny_models import TINY

pytestmark = pytest.mark.comfyui

SNAPSHOT = Path(__file__).resolve().parents[1] / "data" / "object_info.json"
OUR_NODES = {"LongCatModelLoader", "LongCatLoRA", "LongCatBSASettings", "LongCatScheduler",
             "LongCatImageToVideo", "LongCatContinueVideo", "LongCatSampler", "LongCatRefine720p",
             "LongCatLongVideo", "LongCatMultiGPU", "LongCatAvatarModelLoader", "LongCatAvatarSampler",
             "LongCatAvatarExtend"}
STAGE1 = {"width": 64, "height": 32}  # latent 4x8, token grid 2x4
REFINE = {"width": 128, "height": 64}  # multiples of 64: token grid 4x8, BSA chunk 4x4x4 fits
OUR_NODES |= {"LongCatAvatarAudioEmbeds"}


def test_pack_imports_without_error(comfy_server, object_info):
    log = comfy_server.log_text()
    failed = [line for line in log.splitlines() if "IMPORT FAILED" in line and PACK_FOLDER in line]
    assert not failed, "\n".join(failed)
    assert OUR_NODES | {"LongCatTestTextEncode"} <= set(object_info)
    # The server runs with --cpu: the start-up line says BSA will run the torch reference.
    assert "BSA kernel: torch reference, same results but slower (no CUDA device)" in log, (
        comfy_server.log_tail())


def test_object_info_matches_snapshot(object_info):
    """Our nodes' /object_info entries equal the recorded ones; fields a newer ComfyUI adds at
    their default value are tolerated (comfy_drift.node_info_changes)."""
    recorded = json.loads(SNAPSHOT.read_text())
    live = our_node_info(object_info)
    assert set(live) == OUR_NODES
    for name in sorted(OUR_NODES):
        problems = node_info_changes(recorded.get(name), live[name], name)
        assert not problems, ("differs from tests/data/object_info.json (rerun "
                              "scripts/record_object_info.py if intended):\n" + "\n".join(problems))


def test_every_input_and_output_has_a_tooltip(object_info):
    for name in OUR_NODES:
        info = object_info[name]
        for group in ("required", "optional"):
            for field, spec in info["input"].get(group, {}).items():
                assert spec[1].get("tooltip"), f"{name}.{field} has no tooltip"
        assert all(info["output_tooltips"]), f"{name} has an output without a tooltip"
        assert info["category"] in ("LongCat", "LongCat/Avatar")


def _text(node_id, text, tokens=8):
    return {node_id: {"class_type": "LongCatTestTextEncode", "inputs": {"text": text, "tokens": tokens}}}


def _base(extra=None):
    """Loader, prompts, VAE: nodes 1 (MODEL), 2 (+), 3 (-), 6 (VAE)."""
    prompt = {
        "1": {"class_type": "LongCatModelLoader",
              "inputs": {"model_name": TINY["dit"], "weight_dtype": "default"}},
        **_text("2", "a cat walks on the grass"), **_text("3", "", tokens=1),
        "6": {"class_type": "VAELoader", "inputs": {"vae_name": TINY["vae"]}},
    }
    prompt.update(extra or {})
    return prompt


def _saved(entry, node_id):
    return entry["outputs"][node_id]["images"]


def _ksampler(model_ref, steps=2):
    return {"class_type": "KSampler", "inputs": {
        "model": model_ref, "seed": 1, "steps": steps, "cfg": 2.0, "sampler_name": "euler",
        "scheduler": "simple", "positive": ["2", 0], "negative": ["3", 0],
        "latent_image": ["4", 0], "denoise": 1.0}}


def test_ksampler_t2v_on_our_model(comfy_server):
    prompt = _base({
        "4": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {**STAGE1, "length": 5, "batch_size": 1}},
        "5": _ksampler(["1", 0]),
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["6", 0]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "lc_ksampler"}},
    })
    assert len(_saved(comfy_server.run(prompt), "8")) == 5


def test_stock_model_patches_accept_our_model(comfy_server):
    prompt = _base({
        "4": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {**STAGE1, "length": 1, "batch_size": 1}},
        "10": {"class_type": "LoraLoaderModelOnly",
               "inputs": {"model": ["1", 0], "lora_name": TINY["comfy_lora"], "strength_model": 1.0}},
        "11": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["10", 0], "shift": 12.0}},
        "12": {"class_type": "LongCatLoRA",
               "inputs": {"model": ["11", 0], "lora_name": TINY["official_lora"], "strength": 0.5}},
        "5": _ksampler(["12", 0], steps=1),
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["6", 0]}},
        "8": {"class_type": "PreviewImage", "inputs": {"images": ["7", 0]}},
    })
    assert len(_saved(comfy_server.run(prompt), "8")) == 1
    assert "NOT LOADED" not in comfy_server.log_text()


def test_kijai_scaled_fp8_dit_with_kijai_lora(comfy_server):
    """Kijai's file layouts in a plain graph: scaled fp8 DiT, its LoRA through the stock loader
    and through LongCat LoRA, stock KSampler."""
    prompt = _base({
        "4": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {**STAGE1, "length": 1, "batch_size": 1}},
        "10": {"class_type": "LoraLoaderModelOnly",
               "inputs": {"model": ["1", 0], "lora_name": TINY["kijai_lora"], "strength_model": 1.0}},
        "12": {"class_type": "LongCatLoRA",
               "inputs": {"model": ["10", 0], "lora_name": TINY["kijai_lora"], "strength": 0.5}},
        "5": _ksampler(["12", 0], steps=1),
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["6", 0]}},
        "8": {"class_type": "PreviewImage", "inputs": {"images": ["7", 0]}},
    })
    prompt["1"]["inputs"]["model_name"] = TINY["kijai_fp8_dit"]
    assert len(_saved(comfy_server.run(prompt), "8")) == 1
    log = comfy_server.log_text()
    assert "NOT LOADED" not in log and "scaled, per-row scales" in log


def _stage1(sampler_id="5"):
    """T2V with our sampler on the distill schedule: nodes 4 (latent), 9 (sigmas), 5, 7 (IMAGE)."""
    return {
        "4": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {**STAGE1, "length": 5, "batch_size": 1}},
        "9": {"class_type": "LongCatScheduler",
              "inputs": {"mode": "distill", "steps": 2, "t_thresh": 0.5, "shift": 12.0}},
        sampler_id: {"class_type": "LongCatSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent": ["4", 0],
            "sigmas": ["9", 0], "seed": 3, "guidance_scale": 4.0, "use_kv_cache": True,
            "offload_kv_cache": "gpu"}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": [sampler_id, 0], "vae": ["6", 0]}},
    }



def _lora_bsa_refine(model, dense_blocks, prefix):
    """Nodes 20-24: official LoRA on ``model``, BSA at the refine preset, Refine 720p of stage 1's
    frames, the frames saved and the refine's BSA report previewed."""
    return {
        "20": {"class_type": "LongCatLoRA",
               "inputs": {"model": model, "lora_name": TINY["official_lora"], "strength": 1.0}},
        "21": {"class_type": "LongCatBSASettings", "inputs": {
            "model": ["20", 0], "enable": True, "preset": "refine 720p", "sparsity": 0.9375,
            "cdf_threshold": 0.0, "chunk_q": "4,4,4", "chunk_k": "4,4,4", "start_percent": 0.0,
            "end_percent": 1.0, "dense_blocks": dense_blocks, "backend": "auto"}},
        "22": {"class_type": "LongCatRefine720p", "inputs": {
            "model": ["21", 0], "vae": ["6", 0], "positive": ["2", 0], "frames": ["7", 0], **REFINE,
            "t_thresh": 0.5, "spatial_refine_only": False, "seed": 4}},
        "23": {"class_type": "SaveImage", "inputs": {"images": ["22", 0], "filename_prefix": prefix}},
        "24": {"class_type": "PreviewAny", "inputs": {"source": ["22", 2]}},
    }

def test_sampler_then_refine_with_bsa(comfy_server):
    prompt = _base({
        **_stage1(),
        **_lora_bsa_refine(["1", 0], dense_blocks="1", prefix="lc_refine"),
        "25": {"class_type": "PreviewAny", "inputs": {"source": ["21", 1]}},
    })
    entry = comfy_server.run(prompt)
    assert len(_saved(entry, "23")) == 10  # 5 stage-1 frames, 2x in time
    report = "".join(entry["outputs"]["24"]["text"])
    assert "sparse self-attention calls over 1 blocks" in report, report  # block 1 dense
    assert "kernel torch" in report and "density" in report, report
    assert "BSA enabled" in "".join(entry["outputs"]["25"]["text"])


def test_image_to_video_and_continuation(comfy_server):
    prompt = _base({
        **_stage1(),
        "30": {"class_type": "LongCatImageToVideo", "inputs": {
            "vae": ["6", 0], "start_image": ["7", 0], **STAGE1, "length": 5}},
        "31": {"class_type": "LongCatSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "latent": ["30", 0], "sigmas": ["9", 0],
            "seed": 5, "guidance_scale": 1.0, "use_kv_cache": False, "offload_kv_cache": "gpu"}},
        "32": {"class_type": "LongCatContinueVideo", "inputs": {
            "vae": ["6", 0], "video": ["7", 0], "num_cond_frames": 5, **STAGE1, "length": 9}},
        "33": {"class_type": "LongCatSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent": ["32", 0],
            "sigmas": ["9", 0], "seed": 6, "guidance_scale": 4.0, "use_kv_cache": True,
            "offload_kv_cache": "cpu"}},
        "34": {"class_type": "VAEDecode", "inputs": {"samples": ["31", 0], "vae": ["6", 0]}},
        "35": {"class_type": "VAEDecode", "inputs": {"samples": ["33", 0], "vae": ["6", 0]}},
        "36": {"class_type": "SaveImage", "inputs": {"images": ["34", 0], "filename_prefix": "lc_i2v"}},
        "37": {"class_type": "SaveImage", "inputs": {"images": ["35", 0], "filename_prefix": "lc_vc"}},
    })
    entry = comfy_server.run(prompt)
    assert len(_saved(entry, "36")) == 5
    assert len(_saved(entry, "37")) == 9


def test_long_video_with_refinement(comfy_server):
    prompt = _base({
        "9": {"class_type": "LongCatScheduler",
              "inputs": {"mode": "distill", "steps": 2, "t_thresh": 0.5, "shift": 12.0}},
        "40": {"class_type": "ConditioningCombine",
               "inputs": {"conditioning_1": ["2", 0], "conditioning_2": ["3", 0]}},
        "41": {"class_type": "LongCatLongVideo", "inputs": {
            "model": ["1", 0], "vae": ["6", 0], "prompts": ["40", 0], "num_segments": 1, **STAGE1,
            "num_frames": 9, "num_cond_frames": 5, "guidance_scale": 1.0, "seed": 7,
            "use_kv_cache": True, "t_thresh": 0.5, "refine_width": REFINE["width"],
            "refine_height": REFINE["height"], "t2v_sigmas": ["9", 0], "vc_sigmas": ["9", 0],
            "refine_model": ["1", 0], "refine_prompt": ["3", 0]}},
        "42": {"class_type": "SaveImage", "inputs": {"images": ["41", 0], "filename_prefix": "lc_long"}},
    })
    entry = comfy_server.run(prompt)
    # stage 1: 9 + (9 - 5) = 13 frames; refined 2x in windows of 9 with overlap 5 -> 26 frames
    assert len(_saved(entry, "42")) == 26


def test_cancel_stops_a_long_run_promptly(comfy_server):
    prompt = _base({
        "4": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {**STAGE1, "length": 5, "batch_size": 1}},
        "9": {"class_type": "LongCatScheduler",
              "inputs": {"mode": "normal", "steps": 1000, "t_thresh": 0.5, "shift": 12.0}},
        "5": {"class_type": "LongCatSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "latent": ["4", 0], "sigmas": ["9", 0],
            "seed": 8, "guidance_scale": 1.0, "use_kv_cache": False, "offload_kv_cache": "gpu"}},
        "8": {"class_type": "PreviewAny", "inputs": {"source": ["5", 1]}},
    })
    prompt_id = comfy_server.queue_prompt(prompt)
    deadline = time.monotonic() + 120
    while comfy_server.get("/queue")["queue_running"] == [] and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2.0)  # let the sampler loop start
    comfy_server.post("/interrupt", {})
    started = time.monotonic()
    entry = comfy_server.wait(prompt_id, timeout=60)
    assert time.monotonic() - started < 30
    assert entry["status"]["status_str"] == "error"
    assert any(m[0] == "execution_interrupted" for m in entry["status"]["messages"])


@pytest.mark.skipif(sys.platform != "linux", reason="multi-GPU workers need Linux")
def test_multi_gpu_refine_and_unload_models_stops_the_workers(comfy_server):
    """Stage 1 and a BSA refine with LoRA through LongCat Multi-GPU (2 CPU processes here);
    the worker stays between runs and goes when the user unloads the models."""
    prompt = _base({
        "50": {"class_type": "LongCatMultiGPU", "inputs": {"model": ["1", 0], "gpus": 2, "timeout": 120}},
        **_stage1(),
        **_lora_bsa_refine(["50", 0], dense_blocks="", prefix="lc_multi"),
    })
    prompt["5"]["inputs"]["model"] = ["50", 0]
    entry = comfy_server.run(prompt)
    assert len(_saved(entry, "23")) == 10
    assert "sparse self-attention calls over 2 blocks" in "".join(entry["outputs"]["24"]["text"])
    workers = worker_pids(comfy_server.proc.pid)
    assert len(workers) == 1, workers
    status, _ = comfy_server.post("/free", {"unload_models": True})
    assert status == 200
    deadline = time.monotonic() + 30
    while worker_pids(comfy_server.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert worker_pids(comfy_server.proc.pid) == []
    log = comfy_server.log_text()
    assert "LongCat multi-GPU worker rank" not in log and "WorkerError" not in log  # no worker failed


def test_avatar_sampler_then_extend(comfy_server):
    """Avatar folder → sampler (image, text and audio guidance) → extend (13-frame overlap), decoded."""
    prompt = _base({
        **_stage1(),
        "40": {"class_type": "LongCatAvatarModelLoader", "inputs": {"model_name": TINY["avatar"],
                                                                    "weight_dtype": "default"}},
        "41": {"class_type": "LongCatTestAvatarAudio", "inputs": {"frames": 45, "layers": 3, "channels": 8,
                                                                  "seed": 1}},
        "42": {"class_type": "LongCatAvatarSampler", "inputs": {
            "model": ["40", 0], "positive": ["2", 0], "negative": ["3", 0], "audio_embeds": ["41", 0],
            "vae": ["6", 0], "image": ["7", 0], **STAGE1, "num_frames": 29, "schedule": "normal", "steps": 2,
            "shift": 12.0, "text_cfg": 4.0, "audio_cfg": 3.0, "seed": 7}},
        "43": {"class_type": "VAEDecode", "inputs": {"samples": ["42", 0], "vae": ["6", 0]}},
        "44": {"class_type": "LongCatAvatarExtend", "inputs": {
            "model": ["40", 0], "positive": ["2", 0], "audio_embeds": ["41", 0], "vae": ["6", 0],
            "previous_latent": ["42", 0], "previous_images": ["43", 0], "schedule": "dmd", "steps": 8,
            "shift": 12.0, "text_cfg": 1.0, "audio_cfg": 1.0, "seed": 8, "ref_index": 10,
            "mask_frame_range": 3, "use_kv_cache": True}},
        "45": {"class_type": "ImageBatch", "inputs": {"image1": ["43", 0], "image2": ["44", 1]}},
        "46": {"class_type": "SaveImage", "inputs": {"images": ["45", 0], "filename_prefix": "lc_avatar"}},
    })
    entry = comfy_server.run(prompt)
    assert len(_saved(entry, "46")) == 45  # 29 frames, then 29 − 13 new ones
