"""What each bundled workflow promises, checked by name and wiring (not by node position).

Each checker takes a ``Graph`` and returns a list of problems. The numbers are the official
defaults (docs/workflows.md, docs/pipelines.md): 480x832x93, 50 steps at guidance 4 with the official
negative prompt; distilled 16 steps at guidance 1 with the distill LoRA; refinement at t_thresh
0.5, 704x1280, 2x frames, the refinement LoRA + BSA (sparsity 0.9375, 4x4x4 chunks); continuation
with 13 conditioning frames, the enhance_hf schedule and the KV cache. Model files are the
downloadable defaults: Kijai's scaled fp8 DiT and his conversions of the official LoRAs.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def _checks():
    path = Path(__file__).resolve().parents[2] / "harness" / "workflow_checks.py"
    spec = importlib.util.spec_from_file_location("_wf_workflow_checks_x", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


wc = _checks()

DIT = "LongCat_TI2V_comfy_fp8_e4m3fn_scaled_KJ.safetensors"
DISTILL_LORA = "LongCat_distill_lora_alpha64_bf16.safetensors"
REFINE_LORA = "LongCat_refinement_lora_rank128_bf16.safetensors"
OFFICIAL_NEGATIVE_START = "Bright tones, overexposed, static, blurred details"
STAGE1 = {"width": 832, "height": 480}
REFINE = {"width": 1280, "height": 704, "t_thresh": 0.5, "spatial_refine_only": False}
BSA_PUBLISHED = {"enable": True, "preset": "refine 720p", "sparsity": 0.9375,
                 "chunk_q": "4,4,4", "chunk_k": "4,4,4"}


class Graph:
    """Read access to a UI workflow: widgets by name, and who feeds which input."""

    def __init__(self, workflow: dict, object_info: dict):
        self.nodes = {n["id"]: n for n in workflow["nodes"]}
        self.info = object_info
        self.links = {link[0]: link for link in workflow["links"]}

    def of_type(self, node_type: str) -> list[dict]:
        return [n for n in self.nodes.values() if n["type"] == node_type]

    def widgets(self, node: dict) -> dict:
        return wc.widget_values_by_name(node, self.info[node["type"]])

    def source(self, node: dict, input_name: str) -> dict | None:
        """The node feeding ``input_name`` of ``node``, or None if unconnected."""
        for entry in node.get("inputs") or []:
            if entry["name"] == input_name and entry.get("link") is not None:
                return self.nodes[self.links[entry["link"]][1]]
        return None

    def upstream(self, node: dict, input_name: str, node_type: str) -> list[dict]:
        """All nodes of ``node_type`` reachable upstream of ``input_name`` (through any input)."""
        found, stack, seen = [], [self.source(node, input_name)], set()
        while stack:
            current = stack.pop()
            if current is None or current["id"] in seen:
                continue
            seen.add(current["id"])
            if current["type"] == node_type:
                found.append(current)
            stack.extend(self.source(current, e["name"]) for e in current.get("inputs") or [])
        return found


def _expect(where: str, actual: dict, wanted: dict) -> list[str]:
    return [f"{where}: {k}={actual.get(k)!r}, expected {v!r}" for k, v in wanted.items()
            if actual.get(k) != v]


def _loras(g: Graph, node: dict, input_name: str = "model") -> list[str]:
    return sorted(g.widgets(n)["lora_name"] for n in g.upstream(node, input_name, "LongCatLoRA"))


def _one(g: Graph, node_type: str, problems: list) -> list[dict]:
    nodes = g.of_type(node_type)
    if not nodes:
        problems.append(f"no {node_type} node")
    return nodes


def _check_sampler(g: Graph, sampler: dict, mode: str, steps: int, guidance: float,
                   loras: list[str]) -> list[str]:
    where = f"sampler {sampler['id']}"
    problems = _expect(where, g.widgets(sampler), {"guidance_scale": guidance, "seed": 42,
                                                    "use_kv_cache": True})
    sched = g.source(sampler, "sigmas")
    if sched is None or sched["type"] != "LongCatScheduler":
        return problems + [f"{where}: sigmas do not come from LongCatScheduler"]
    problems += _expect(f"scheduler {sched['id']}", g.widgets(sched),
                        {"mode": mode, "steps": steps, "shift": 12.0})
    if _loras(g, sampler) != loras:
        problems.append(f"{where}: LoRAs upstream {_loras(g, sampler)}, expected {loras}")
    negative = g.source(sampler, "negative")
    if guidance > 1.0:
        text = g.widgets(negative)["text"] if negative is not None else ""
        if not text.startswith(OFFICIAL_NEGATIVE_START):
            problems.append(f"{where}: guidance {guidance} needs the official negative prompt")
    elif negative is not None:
        problems.append(f"{where}: guidance 1 runs no negative pass; negative is connected")
    return problems


def _check_stage1_latent(g: Graph, sampler: dict, latent_type: str) -> list[str]:
    latent = g.source(sampler, "latent")
    if latent is None or latent["type"] != latent_type:
        return [f"sampler {sampler['id']}: latent is not from {latent_type}"]
    return _expect(f"{latent_type} {latent['id']}", g.widgets(latent), {**STAGE1, "length": 93})


def _check_refine(g: Graph, refine: dict) -> list[str]:
    """Official refinement widgets, the refinement LoRA and one BSA node (published parameters;
    whether it is enabled is checked by the caller)."""
    where = f"refine {refine['id']}"
    problems = _expect(where, g.widgets(refine), REFINE)
    if _loras(g, refine) != [REFINE_LORA]:
        problems.append(f"{where}: LoRAs upstream {_loras(g, refine)}, expected {REFINE_LORA}")
    bsa = g.upstream(refine, "model", "LongCatBSASettings")
    if len(bsa) != 1:
        return problems + [f"{where}: {len(bsa)} BSA settings nodes upstream, expected 1"]
    published = {k: v for k, v in BSA_PUBLISHED.items() if k != "enable"}
    return problems + _expect(f"BSA {bsa[0]['id']}", g.widgets(bsa[0]), published)


def _check_output(g: Graph, fps: float, problems: list) -> None:
    for video in _one(g, "CreateVideo", problems):
        if g.widgets(video)["fps"] != fps:
            problems.append(f"CreateVideo {video['id']}: fps {g.widgets(video)['fps']}, not {fps}")


def t2v_480p(g: Graph) -> list[str]:
    problems = []
    for sampler in _one(g, "LongCatSampler", problems):
        problems += _check_sampler(g, sampler, "normal", 50, 4.0, [])
        problems += _check_stage1_latent(g, sampler, "EmptyHunyuanLatentVideo")
    _check_output(g, 15.0, problems)
    return problems


def t2v_distill(g: Graph) -> list[str]:
    problems = []
    for sampler in _one(g, "LongCatSampler", problems):
        problems += _check_sampler(g, sampler, "distill", 16, 1.0, [DISTILL_LORA])
        problems += _check_stage1_latent(g, sampler, "EmptyHunyuanLatentVideo")
    _check_output(g, 15.0, problems)
    return problems


def _refine_from_distilled(g: Graph, latent_type: str, bsa_states: list[bool]) -> list[str]:
    problems = []
    samplers = _one(g, "LongCatSampler", problems)
    for sampler in samplers:
        problems += _check_sampler(g, sampler, "distill", 16, 1.0, [DISTILL_LORA])
        problems += _check_stage1_latent(g, sampler, latent_type)
    refines = _one(g, "LongCatRefine720p", problems)
    states = sorted(g.widgets(b)["enable"] for r in refines
                    for b in g.upstream(r, "model", "LongCatBSASettings"))
    if states != sorted(bsa_states):
        problems.append(f"BSA enable states {states}, expected {sorted(bsa_states)}")
    for refine in refines:
        problems += _check_refine(g, refine)
        frames = g.upstream(refine, "frames", "LongCatSampler")
        if [s["id"] for s in frames] != [s["id"] for s in samplers[:1]]:
            problems.append(f"refine {refine['id']}: frames do not come from the stage-1 sampler")
    return problems


def t2v_refine(g: Graph) -> list[str]:
    return _refine_from_distilled(g, "EmptyHunyuanLatentVideo", [True])


def i2v_refine(g: Graph) -> list[str]:
    problems = _refine_from_distilled(g, "LongCatImageToVideo", [True])
    for refine in g.of_type("LongCatRefine720p"):
        cond = g.source(refine, "cond_frames")
        if cond is None or cond["type"] != "LoadImage":
            problems.append("i2v refine: cond_frames is not the start image")
        if g.widgets(refine)["num_cond_frames"] != 1:
            problems.append("i2v refine: num_cond_frames must be 1 (the start image)")
    return problems


def continuation(g: Graph) -> list[str]:
    problems = []
    for sampler in _one(g, "LongCatSampler", problems):
        problems += _check_sampler(g, sampler, "enhance_hf", 50, 4.0, [])
        problems += _check_stage1_latent(g, sampler, "LongCatContinueVideo")
        latent = g.source(sampler, "latent")
        if latent and g.widgets(latent)["num_cond_frames"] != 13:
            problems.append("continuation: num_cond_frames must be 13")
        if latent and not g.upstream(latent, "video", "LoadVideo"):
            problems.append("continuation: the video does not come from LoadVideo")
        # The official demo resamples the input to 15 fps before taking the conditioning frames.
        fps = g.source(latent, "video_fps") if latent else None
        if fps is None or fps["type"] != "GetVideoComponents" or not g.upstream(
                fps, "video", "LoadVideo"):
            problems.append("continuation: video_fps is not the loaded video's frame rate")
        if latent and g.widgets(latent)["target_fps"] != 15.0:
            problems.append("continuation: target_fps must be 15 (official)")
    _check_output(g, 15.0, problems)
    return problems


def long_video(g: Graph) -> list[str]:
    problems = []
    for node in _one(g, "LongCatLongVideo", problems):
        problems += _expect(f"long video {node['id']}", g.widgets(node),
                            {**STAGE1, "num_frames": 93, "num_cond_frames": 13,
                             "guidance_scale": 4.0, "seed": 42, "use_kv_cache": True,
                             "t_thresh": 0.5, "refine_width": 1280, "refine_height": 704})
        prompts = g.upstream(node, "prompts", "CLIPTextEncode")
        clips = g.widgets(node)["num_segments"] + 1
        if len(prompts) < 2 or len(prompts) != clips:
            problems.append(f"long video: {len(prompts)} prompts for {clips} clips; the node "
                            "needs one per clip")
        negative = g.source(node, "negative")
        if negative is None or not g.widgets(negative)["text"].startswith(OFFICIAL_NEGATIVE_START):
            problems.append("long video: negative is not the official negative prompt")
        refine_prompt = g.source(node, "refine_prompt")
        if refine_prompt is None or g.widgets(refine_prompt)["text"] != "":
            problems.append("long video: refine_prompt must be the empty prompt (official)")
        if _loras(g, node, "refine_model") != [REFINE_LORA]:
            problems.append(f"long video: refine_model lacks {REFINE_LORA}")
        if _loras(g, node, "model"):
            problems.append("long video: the stage-1 model must carry no LoRA")
        bsa = g.upstream(node, "refine_model", "LongCatBSASettings")
        problems += [] if len(bsa) == 1 else ["long video: refine_model lacks BSA settings"]
        problems += _expect("long video BSA", g.widgets(bsa[0]), BSA_PUBLISHED) if bsa else []
    _check_output(g, 30.0, problems)
    return problems


def bsa_comparison(g: Graph) -> list[str]:
    problems = _refine_from_distilled(g, "EmptyHunyuanLatentVideo", [True, False])
    seeds = {g.widgets(r)["seed"] for r in g.of_type("LongCatRefine720p")}
    if len(seeds) != 1:
        problems.append(f"comparison: both refinements need the same seed, got {seeds}")
    return problems


EXPECTED = {
    "longcat_t2v_480p.json": t2v_480p,
    "longcat_t2v_distill_16step.json": t2v_distill,
    "longcat_t2v_refine_720p_bsa.json": t2v_refine,
    "longcat_i2v_refine_720p_bsa.json": i2v_refine,
    "longcat_video_continuation.json": continuation,
    "longcat_long_video_multi_prompt.json": long_video,
    "longcat_bsa_on_off_comparison.json": bsa_comparison,
}


# LongCat-Video-Avatar 1.5 (docs/avatar_audio.md): DMD LoRA, 8 steps, text and audio guidance 1,
# 832x480x93 at 25 fps; whisper-large-v3 through the stock AudioEncoderLoader; the soundtrack
# from the audio embeds node under the video; continuation with ref_index 10 / range 3.
AVATAR_SAMPLE = {"schedule": "dmd", "text_cfg": 1.0, "audio_cfg": 1.0, "seed": 42}


def _avatar_common(g: Graph, streams: int, video_frames: int, problems: list) -> dict | None:
    embeds = _one(g, "LongCatAvatarAudioEmbeds", problems)
    if not embeds:
        return None
    node = embeds[0]
    problems += _expect(f"audio embeds {node['id']}", g.widgets(node), {"video_frames": video_frames})
    encoder = g.source(node, "audio_encoder")
    if encoder is None or encoder["type"] != "AudioEncoderLoader" or "whisper" not in g.widgets(encoder)["audio_encoder_name"]:
        problems.append("audio embeds: audio_encoder is not whisper-large-v3 from AudioEncoderLoader")
    for name in ("audio", "audio_2")[:streams]:
        source = g.source(node, name)
        if source is None or source["type"] != "LoadAudio":
            problems.append(f"audio embeds: {name} is not from LoadAudio")
    if streams == 1 and g.source(node, "audio_2") is not None:
        problems.append("audio embeds: a second speaker is connected in a one-speaker workflow")
    for video in g.of_type("CreateVideo"):
        if g.source(video, "audio") is not node:
            problems.append(f"CreateVideo {video['id']}: the soundtrack is not the audio embeds node's audio")
    _check_output(g, 25.0, problems)
    return node


def _avatar_sampler(g: Graph, embeds: dict, problems: list) -> None:
    for sampler in _one(g, "LongCatAvatarSampler", problems):
        problems += _expect(f"avatar sampler {sampler['id']}", g.widgets(sampler),
                            {**STAGE1, "num_frames": 93, **AVATAR_SAMPLE})
        if g.source(sampler, "audio_embeds") is not embeds:
            problems.append("avatar sampler: audio_embeds is not from the audio embeds node")
        if g.source(sampler, "image") is None:
            problems.append("avatar sampler: no reference image")
        if _loras(g, sampler) != ["dmd_lora.safetensors"]:
            problems.append(f"avatar sampler: LoRAs upstream {_loras(g, sampler)}, expected the DMD LoRA")


def avatar_single(g: Graph) -> list[str]:
    problems = []
    embeds = _avatar_common(g, 1, 93, problems)
    if embeds is not None:
        _avatar_sampler(g, embeds, problems)
    return problems


def avatar_two(g: Graph) -> list[str]:
    problems = []
    embeds = _avatar_common(g, 2, 93, problems)
    if embeds is not None:
        _avatar_sampler(g, embeds, problems)
    return problems


def avatar_long(g: Graph) -> list[str]:
    problems = []
    extends = g.of_type("LongCatAvatarExtend")
    embeds = _avatar_common(g, 1, 93 + 80 * len(extends), problems)
    if embeds is None:
        return problems
    _avatar_sampler(g, embeds, problems)
    if len(extends) < 1:
        problems.append("long avatar video: no LongCat Avatar Extend")
    for node in extends:
        problems += _expect(f"avatar extend {node['id']}", g.widgets(node),
                            {**AVATAR_SAMPLE, "ref_index": 10, "mask_frame_range": 3, "use_kv_cache": True})
        if g.source(node, "previous_latent") is None or g.source(node, "previous_images") is None:
            problems.append(f"avatar extend {node['id']}: previous segment not connected")
        if _loras(g, node) != ["dmd_lora.safetensors"]:
            problems.append(f"avatar extend {node['id']}: no DMD LoRA upstream")
    return problems


EXPECTED.update({
    "longcat_avatar_1.5_single_speaker_dmd.json": avatar_single,
    "longcat_avatar_1.5_two_speakers_dmd.json": avatar_two,
    "longcat_avatar_1.5_long_video_extend.json": avatar_long,
})
