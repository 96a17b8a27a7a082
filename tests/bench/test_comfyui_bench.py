"""The real-ComfyUI VRAM bench's own pieces on the CPU (no ComfyUI): random model files, stage
prompts from the bundled workflows, and how it reads timings and loads from a server."""

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import comfyui_bench_metrics as metrics
import comfyui_bench_models as models
import comfyui_bench_stages as stages
from longcat_pack.longcat import weights
from longcat_pack.longcat.convert import convert
from longcat_pack.longcat.lora import load_lora_file

TINY = {"hidden_size": 64, "depth": 2, "num_heads": 2, "caption_channels": 32,
        "adaln_tembed_dim": 32, "frequency_embedding_size": 16}
OBJECT_INFO = json.loads((ROOT / "tests" / "data" / "object_info.json").read_text())


def test_fp8_file_is_what_the_converter_makes_of_the_bf16_file(tmp_path):
    both, alone = tmp_path / "both", tmp_path / "alone"
    both.mkdir()
    alone.mkdir()
    paths = models.write_dit(both, ["bf16", "fp8"], TINY, "cpu")
    fp8_alone = models.write_dit(alone, ["fp8"], TINY, "cpu")["fp8"]
    converted = convert(paths["bf16"], tmp_path / "converted.safetensors", torch.float8_e4m3fn)
    assert paths["fp8"].read_bytes() == converted.read_bytes() == fp8_alone.read_bytes()


def test_random_dit_has_the_official_layout_and_runs(tmp_path):
    path = models.write_dit(tmp_path, ["bf16"], TINY, "cpu")["bf16"]
    infos, _ = weights.inspect_checkpoint(path)
    assert {k: v.shape for k, v in infos.items()} == models.dit_shapes(TINY)
    dit = weights.load_dit(path, torch.float32)
    out = dit(torch.randn(1, 16, 2, 4, 4), torch.tensor([500.0]), torch.randn(1, 8, 32))
    assert torch.isfinite(out).all() and out.std() > 0


def test_random_loras_target_every_block_linear(tmp_path):
    cfg, refine = models.write_loras(tmp_path, TINY, rank=4, device="cpu")
    shapes = models.dit_shapes(TINY)
    deltas = load_lora_file(cfg, shapes)
    assert len(deltas) == TINY["depth"] * len(models.LORA_TARGETS)
    qkv = deltas["blocks.0.attn.qkv.weight"]
    assert qkv.weight().shape == shapes["blocks.0.attn.qkv.weight"] and qkv.scale == 0.5
    assert not torch.equal(qkv.up, load_lora_file(refine, shapes)["blocks.0.attn.qkv.weight"].up)


SAMPLER_STAGES = [s for s, spec in stages.STAGES.items() if spec.main_node in stages.LATENT_OUTPUT]


@pytest.mark.parametrize("stage", SAMPLER_STAGES)
def test_stage_prompts_keep_the_workflow_shapes_and_cut_the_steps(stage):
    prompt, notes = stages.build_prompt(stage, OBJECT_INFO, "dit_fp8.safetensors", "fp8_e4m3fn",
                                        steps=3, refine_steps=2, prefix="bench/x", tiny=False)
    kinds = [n["class_type"] for n in prompt.values()]
    assert "CLIPLoader" not in kinds and "CLIPTextEncode" not in kinds
    assert "LongCatTestTextEncode" in kinds
    by_kind = {n["class_type"]: n["inputs"] for n in prompt.values()}
    assert by_kind["LongCatModelLoader"] == {"model_name": "dit_fp8.safetensors",
                                             "weight_dtype": "fp8_e4m3fn", "quantized_matmul": False}
    assert by_kind["LongCatScheduler"]["steps"] == 3
    assert by_kind["LongCatScheduler"]["mode"] != "enhance_hf"
    if "EmptyHunyuanLatentVideo" in by_kind:
        assert by_kind["EmptyHunyuanLatentVideo"] | {"batch_size": 1} == {
            "width": 832, "height": 480, "length": 93, "batch_size": 1}
    if stage == "refine":
        refine = by_kind["LongCatRefine720p"]
        assert (refine["width"], refine["height"]) == (1280, 704)
        assert len(stages.refine_sigmas(t_thresh=refine["t_thresh"])) - 1 == notes["refine_steps"] == 2
    main = stages.main_node_id(prompt, stage)
    saved = [n["inputs"]["samples"][0] for n in prompt.values() if n["class_type"] == "SaveLatent"]
    assert main in saved
    assert "SaveVideo" not in kinds  # PreviewAny of the same video: the decode still runs
    for node in prompt.values():
        assert None not in node["inputs"].values(), node  # every widget has a value


def test_long_segment_runs_one_segment_without_refinement():
    prompt, notes = stages.build_prompt("long_segment", OBJECT_INFO, "dit_fp8.safetensors", "fp8_e4m3fn",
                                        steps=3, refine_steps=2, prefix="bench/x", tiny=False)
    video = prompt[stages.main_node_id(prompt, "long_segment")]["inputs"]
    assert video["num_segments"] == 1 and "refine_model" not in video and "refine_prompt" not in video
    assert prompt[video["prompts"][0]]["class_type"] == "LongCatTestTextEncode"
    scheduler = prompt[video["t2v_sigmas"][0]]
    assert video["vc_sigmas"] == video["t2v_sigmas"] and scheduler["inputs"]["steps"] == 3
    assert (video["width"], video["height"], video["num_frames"], video["num_cond_frames"]) == (832, 480, 93, 13)


def test_vae720_decodes_a_refine_sized_latent_with_stock_nodes():
    prompt, notes = stages.build_prompt("vae720", OBJECT_INFO, "dit.safetensors", "default", steps=3,
                                        refine_steps=2, prefix="bench/x", tiny=False)
    by_kind = {n["class_type"]: n["inputs"] for n in prompt.values()}
    assert by_kind["EmptyHunyuanLatentVideo"] == {"width": 1280, "height": 704, "length": 93, "batch_size": 1}
    assert stages.main_node_id(prompt, "vae720") in [i for i, n in prompt.items() if n["class_type"] == "VAEDecode"]
    assert all(kind in OBJECT_INFO for kind in by_kind)


def _events():
    """A sampler node (9) with 3 steps; a tiled VAE's progress (max 12) inside it is ignored."""
    return [(0.0, "executing", {"node": "8"}), (1.0, "executing", {"node": "9"}),
            (6.0, "progress", {"node": "9", "value": 1, "max": 3}),
            (6.5, "progress", {"node": "9", "value": 1, "max": 12}),
            (8.0, "progress", {"node": "9", "value": 2, "max": 3}),
            (10.0, "progress", {"node": "9", "value": 3, "max": 3}),
            (13.0, "executing", {"node": "10"}), (20.0, "execution_success", {})]


def test_step_timing_excludes_loading_and_the_first_step():
    timing = metrics.step_timing(_events(), "9", 3)
    assert timing["s_per_step"] == 2.0 and timing["steps_done"] == 3
    assert timing["first_step_s"] == 5.0 and timing["after_last_step_s"] == 3.0
    nodes = metrics.node_timings(_events(), {"9": {"class_type": "LongCatSampler"}})
    assert [(n["id"], n["seconds"]) for n in nodes] == [("8", 1.0), ("9", 12.0), ("10", 7.0)]


def test_log_parsing_finds_partial_dit_loads_after_a_vae_pass():
    lines = ["Requested to load LongCatVideoModel", "loaded partially 17000.5 16990.2 0",
             "Requested to load WanVAE", "loaded completely 9.5367431640625e+25 242.1 True",
             "loaded partially 15000.0 14980.0 0",  # the DiT again, no "Requested" line
             "Warning: Ran out of memory when regular VAE decoding, retrying with tiled VAE decoding.",
             "Exception during fp8 op: Bias is not supported when out_dtype is set to Float32",
             "Prompt executed in 12.50 seconds"]
    log = "\n".join(lines)
    parsed = metrics.parse_log(log)
    assert [(x["model"], x["mode"]) for x in parsed["loads"]] == [
        ("LongCatVideoModel", "partially"), ("WanVAE", "completely"), ("LongCatVideoModel", "partially")]
    assert parsed["dit_partially_loaded"] and len(parsed["vae_tiled_fallback"]) == 1
    assert parsed["fp8_op_exceptions"] == 1 and parsed["prompt_executed_s"] == [12.5]
    assert metrics.dit_partial(parsed, {}) is True
    held = {"models_at_end": [{"model": "LongCatVideoModel", "loaded_gib": 13.0, "total_gib": 13.0}]}
    assert metrics.dit_partial({"loads": []}, held) is False
