"""Generate the bundled workflows in ``workflows/`` from the recorded node schemas.

    python scripts/build_workflows.py            # rewrite workflows/*.json
    python scripts/build_workflows.py --check    # exit 1 if a file differs from the generated one

Run after ``scripts/record_object_info.py`` whenever a node's inputs change, then run
``pytest tests/workflows``. Defaults are the official ones (reference: docs/workflows.md).
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workflow_avatar import AVATAR_WORKFLOWS
from workflow_builder import Column, Workflow
from workflow_parts import (
    DISTILL_LORA,
    I2V_PROMPT,
    INPUT_VIDEO,
    NEGATIVE,
    PROMPT,
    REFINE_LORA,
    SEED,
    STORY,
    VC_PROMPT,
    VRAM_480P,
    VRAM_720P,
    VRAM_CONTINUATION,
    bsa,
    decode,
    encode,
    load_models,
    lora,
    refine,
    report,
    sample,
    save_video,
    vram_note,
)

ROOT = Path(__file__).resolve().parents[1]
OBJECT_INFO = ROOT / "tests" / "data" / "object_info.json"
OUT = ROOT / "workflows"


def _start(info: dict, prompt_title: str, negative: bool = False):
    """A workflow with the model loaders in the first column and, in the second, the prompt
    (and the official negative); returns (workflow, model loaders by role, prompt nodes)."""
    wf = Workflow(info)
    models = load_models(wf, Column(0))
    p = Column(460)
    prompts = [encode(wf, p, models["clip"], PROMPT, prompt_title)]
    if negative:
        prompts.append(encode(wf, p, models["clip"], NEGATIVE, "Negative prompt (official)",
                              negative=True))
    wf.group("Prompt", prompts)
    return wf, models, prompts


def _empty_latent(wf: Workflow, col: Column):
    return col.push(wf.add("EmptyHunyuanLatentVideo", col.next(),
                           {"width": 832, "height": 480, "length": 93, "batch_size": 1}))


def _decode_and_save(wf: Workflow, sampler, vae, prefix: str,
                     group: str = "Decode and save (15 fps)", title=None):
    """VAEDecode and a 15 fps video in the third column, framed as ``group``; returns IMAGE."""
    o = Column(1420)
    images = decode(wf, o, sampler, vae)
    _, save = save_video(wf, o, images, 15.0, prefix, title=title)
    wf.group(group, [images, save])
    return images


def t2v_480p(info: dict) -> Workflow:
    wf, models, (pos, neg) = _start(info, "Positive prompt", negative=True)
    s = Column(960)
    latent = _empty_latent(wf, s)
    sampler = sample(wf, s, models["dit"], pos, latent, "normal", 50, 4.0, negative=neg)
    wf.group("Sample: 50 steps, guidance 4", [latent, sampler])
    _decode_and_save(wf, sampler, models["vae"], "LongCat/t2v_480p")
    vram_note(wf, (-520, 0), "LongCat-Video text-to-video, 480p, 50 steps",
              "The official base recipe: 480×832, 93 frames (6.2 s at 15 fps), 50 Euler steps "
              "on the shift-12 flow schedule, CFG-Zero* guidance 4.0 with the official negative "
              "prompt, seed 42.\n\n" + VRAM_480P)
    return wf


def t2v_distill(info: dict) -> Workflow:
    wf, models, (pos,) = _start(info, "Positive prompt")
    s = Column(960)
    distill = lora(wf, s, models["dit"], DISTILL_LORA, "Distill LoRA (16 steps)")
    latent = _empty_latent(wf, s)
    sampler = sample(wf, s, distill, pos, latent, "distill", 16, 1.0)
    wf.group("Distilled: 16 steps, cfg 1", [distill, latent, sampler])
    _decode_and_save(wf, sampler, models["vae"], "LongCat/t2v_480p_distill")
    vram_note(wf, (-520, 0), "LongCat-Video text-to-video, distilled (16 steps)",
              "The official distilled recipe: the distill LoRA (official `cfg_step_lora`) at "
              "strength 1, the 16-step distill "
              "schedule, guidance 1.0 and no negative prompt (one DiT pass per step, ~6× "
              "fewer passes than the 50-step workflow). 480×832, 93 frames, seed 42.\n\n"
              + VRAM_480P + "\n\nThe distill LoRA file is about 1.3 GB (bf16); ComfyUI patches it into "
              "the DiT weights.")
    return wf


def _distilled_stage1(wf: Workflow, models: dict, pos, make_latent=_empty_latent):
    """Stage 1 of the refine workflows: distill LoRA, 16 steps, guidance 1; returns IMAGE."""
    s = Column(960)
    distill = lora(wf, s, models["dit"], DISTILL_LORA, "Distill LoRA (16 steps)")
    latent = make_latent(wf, s)
    sampler = sample(wf, s, distill, pos, latent, "distill", 16, 1.0, title="Stage 1 sampler")
    wf.group("Stage 1: 480p, 16 steps", [distill, latent, sampler])
    return _decode_and_save(wf, sampler, models["vae"], "LongCat/stage1_480p",
                            "Stage 1 output (15 fps)", title="Save 480p")


def _refine_stage(wf: Workflow, models: dict, pos, images, prefix: str, x: float = 960,
                  y: float = 860, num_cond_frames: int = 0):
    """Stage 2 in a row below stage 1: refinement LoRA + BSA, refine node, report, save."""
    r = Column(x, y)
    refine_model = lora(wf, r, models["dit"], REFINE_LORA, "Refinement LoRA")
    sparse = bsa(wf, r, refine_model)
    wf.group("Stage 2 model: LoRA + BSA", [refine_model, sparse])
    c = Column(x + 480, y)
    ref = refine(wf, c, sparse, models["vae"], pos, images, num_cond_frames=num_cond_frames)
    rep = report(wf, c, ref.out("bsa_report"), "BSA report")
    o = Column(x + 1000, y)
    _, save = save_video(wf, o, ref.out("IMAGE"), 30.0, prefix, title="Save 720p")
    wf.group("Stage 2: refine to 704×1280, 2× frames (30 fps)", [ref, rep, save])
    return ref


def t2v_refine(info: dict) -> Workflow:
    wf, models, (pos,) = _start(info, "Prompt (both stages)")
    images = _distilled_stage1(wf, models, pos)
    _refine_stage(wf, models, pos, images, "LongCat/t2v_720p")
    vram_note(wf, (-520, 0), "Text-to-video, then refine to 720p with BSA",
              "The official two-stage recipe. Stage 1: distilled 480p (distill LoRA, 16 steps, "
              "guidance 1). Stage 2: the refinement LoRA plus block-sparse attention (published "
              "setting: sparsity 0.9375, 4×4×4 chunks) upsamples to 704×1280 and 2× frames "
              "(186 frames, 30 fps), re-encodes, noises to t_thresh 0.5 and denoises 5 steps "
              "without CFG. Both stages branch from the same loaded DiT; the LoRA nodes patch "
              "clones.\n\n" + VRAM_480P + "\n\n" + VRAM_720P, height=620)
    return wf


def i2v_refine(info: dict) -> Workflow:
    wf = Workflow(info)
    models = load_models(wf, Column(0))
    p = Column(460)
    pos = encode(wf, p, models["clip"], I2V_PROMPT, "Prompt (both stages)")
    image = p.push(wf.add("LoadImage", p.next(), {"image": "example.png"}, width=420,
                          title="Start image"))
    wf.group("Prompt and start image", [pos, image])

    def i2v_latent(wf: Workflow, col: Column):
        latent = col.push(wf.add("LongCatImageToVideo", col.next(),
                                 {"width": 832, "height": 480, "length": 93}))
        wf.link(models["vae"], latent, "vae")
        wf.link(image.out("IMAGE"), latent, "start_image")
        return latent

    images = _distilled_stage1(wf, models, pos, make_latent=i2v_latent)
    ref = _refine_stage(wf, models, pos, images, "LongCat/i2v_720p", num_cond_frames=1)
    wf.link(image.out("IMAGE"), ref, "cond_frames")
    vram_note(wf, (-520, 0), "Image-to-video, then refine to 720p with BSA",
              "The start image becomes the first (clean) latent frame; stage 1 generates the "
              "other 92 frames (distilled, 16 steps, guidance 1; for the 50-step base remove "
              "the LoRA, set the scheduler to normal/50, guidance 4 and add the negative "
              "prompt). Stage 2 refines to 704×1280 with the image as the held first frame "
              "(`num_cond_frames` 1). The image is resized to the stage-1 size.\n\n"
              + VRAM_480P + "\n\n" + VRAM_720P, height=620)
    return wf


def continuation(info: dict) -> Workflow:
    wf = Workflow(info)
    models = load_models(wf, Column(0))
    p = Column(460)
    pos = encode(wf, p, models["clip"], VC_PROMPT, "Positive prompt")
    neg = encode(wf, p, models["clip"], NEGATIVE, "Negative prompt (official)", negative=True)
    video = p.push(wf.add("LoadVideo", p.next(), {"file": INPUT_VIDEO}, width=420,
                          title="Video to continue (file in ComfyUI/input/)"))
    parts = p.push(wf.add("GetVideoComponents", p.next()))
    wf.link(video, parts, "video")
    wf.group("Prompt and input video", [pos, neg, video, parts])
    s = Column(960)
    latent = s.push(wf.add("LongCatContinueVideo", s.next(),
                           {"num_cond_frames": 13, "width": 832, "height": 480, "length": 93,
                            "target_fps": 15.0}))
    wf.link(models["vae"], latent, "vae")
    wf.link(parts.out("images"), latent, "video")
    wf.link(parts.out("fps"), latent, "video_fps")
    sampler = sample(wf, s, models["dit"], pos, latent, "enhance_hf", 50, 4.0, negative=neg)
    wf.group("Continue: 13 cond frames", [latent, sampler])
    _decode_and_save(wf, sampler, models["vae"], "LongCat/continuation")
    vram_note(wf, (-520, 0), "Video continuation",
              "**Input video**: put an .mp4 (any frame rate, at least ~1 s) in "
              "`ComfyUI/input/` as `input_video.mp4`, or click *choose video to upload* on "
              "the Load Video node and pick it there. Get Video Components passes its frames "
              "and frame rate to LongCat Continue Video, which first resamples it to 15 fps as "
              "the official demo does (keeps every round(fps / 15)-th frame: 30 fps → every "
              "2nd), then encodes the last 13 frames (4 latent frames) as clean conditioning "
              "at 480×832. 80 new frames follow (93 in all, the first 13 reproduce the input), "
              "saved at 15 fps.\n\nOfficial settings: the enhance_hf schedule (56 steps), "
              "guidance 4 with the official negative, KV cache on (the conditioning frames' "
              "keys and values are computed once).\n\n"
              + VRAM_480P + "\n\n" + VRAM_CONTINUATION, height=700)
    return wf


def long_video(info: dict) -> Workflow:
    wf = Workflow(info)
    models = load_models(wf, Column(0))
    p = Column(460)
    prompts = [encode(wf, p, models["clip"], text, f"Prompt {i + 1}" + (" (text-to-video)"
                                                                        if i == 0 else ""))
               for i, text in enumerate(STORY)]
    neg = encode(wf, p, models["clip"], NEGATIVE, "Negative prompt (official)", negative=True)
    empty = encode(wf, p, models["clip"], "", "Refine prompt (official: empty)")
    wf.group("Prompts: one per clip, in order", [*prompts, neg, empty])
    c = Column(960, 120)
    combined, chain = prompts[0], []
    for nxt in prompts[1:]:
        node = c.push(wf.add("ConditioningCombine", c.next(), width=260))
        wf.link(combined, node, "conditioning_1")
        wf.link(nxt, node, "conditioning_2")
        combined = node
        chain.append(node)
    wf.group("Chain the prompts", chain)
    r = Column(960, 520)
    refine_model = lora(wf, r, models["dit"], REFINE_LORA, "Refinement LoRA")
    sparse = bsa(wf, r, refine_model)
    wf.group("Refinement model: LoRA + BSA", [refine_model, sparse])
    g = Column(1440)
    gen = g.push(wf.add("LongCatLongVideo", g.next(),
                        {"num_segments": 3, "width": 832, "height": 480, "num_frames": 93,
                         "num_cond_frames": 13, "guidance_scale": 4.0, "seed": SEED,
                         "use_kv_cache": True, "t_thresh": 0.5, "refine_width": 1280,
                         "refine_height": 704}, width=380))
    for source, name in ((models["dit"], "model"), (models["vae"], "vae"), (combined, "prompts"),
                         (neg, "negative"), (sparse, "refine_model"), (empty, "refine_prompt")):
        wf.link(source, gen, name)
    rep = report(wf, g, gen.out("bsa_report"), "BSA report")
    wf.group("Long video: 4 clips", [gen, rep])
    o = Column(1920)
    video, save = save_video(wf, o, gen.out("IMAGE"), 30.0, "LongCat/long_video")
    wf.group("Save (30 fps)", [video, save])
    vram_note(wf, (-520, 0), "Long video with several prompts",
              "The official long-video recipe: a 93-frame text-to-video clip, then continuation "
              "segments that each add 80 frames conditioned on the last 13 (KV cache, "
              "enhance_hf, guidance 4), one prompt per clip: prompt 1 for the first clip, "
              "prompts 2–4 for segments 1–3 (333 frames at 15 fps, 22 s). Then refinement to "
              "704×1280 at 30 fps in overlapping windows with the empty prompt. Disconnect "
              "`refine_model` for stage 1 only. Give num_segments + 1 prompts (or a single "
              "prompt for every clip); a different count is an error.\n\n" + VRAM_480P + "\n\n" + VRAM_720P
              + "\n\nThe whole video's frames stay in CPU RAM (~1 GB per 100 refined frames).",
              height=700)
    return wf


def bsa_comparison(info: dict) -> Workflow:
    wf, models, (pos,) = _start(info, "Prompt (both stages)")
    images = _distilled_stage1(wf, models, pos)
    r = Column(960, 860)
    refine_model = lora(wf, r, models["dit"], REFINE_LORA, "Refinement LoRA")
    on = bsa(wf, r, refine_model, enable=True)
    off = bsa(wf, r, refine_model, enable=False)
    wf.group("Refinement LoRA, BSA on / off", [refine_model, on, off])
    rows = {}
    for label, model, y in (("on", on, 860), ("off", off, 1560)):
        c = Column(1440, y)
        ref = refine(wf, c, model, models["vae"], pos, images, title=f"Refine 720p, BSA {label}")
        rep = report(wf, c, ref.out("bsa_report"), f"BSA report ({label})")
        o = Column(1960, y)
        _, save = save_video(wf, o, ref.out("IMAGE"), 30.0, f"LongCat/refine_bsa_{label}",
                             title=f"Save 720p, BSA {label}")
        rows[label] = [ref, rep, save]
        wf.group(f"Refine with BSA {label}", rows[label],
                 color="#3f789e" if label == "on" else "#8a4f3f")
    vram_note(wf, (-520, 0), "BSA on / off comparison",
              "One distilled 480p clip is refined twice with the same seed: once with "
              "block-sparse attention (published setting: sparsity 0.9375, 4×4×4 chunks, about "
              "1/16 of the key blocks), once dense. Compare the two videos and the BSA reports "
              "(density, kept chunks, which kernel ran); the ComfyUI console logs the run time. "
              "For a timing comparison run the branches separately (mute one), since both share "
              "stage 1.\n\n" + VRAM_720P, height=520)
    return wf


WORKFLOWS = {
    "longcat_t2v_480p.json": t2v_480p,
    "longcat_t2v_distill_16step.json": t2v_distill,
    "longcat_t2v_refine_720p_bsa.json": t2v_refine,
    "longcat_i2v_refine_720p_bsa.json": i2v_refine,
    "longcat_video_continuation.json": continuation,
    "longcat_long_video_multi_prompt.json": long_video,
    "longcat_bsa_on_off_comparison.json": bsa_comparison,
}
WORKFLOWS.update(AVATAR_WORKFLOWS)


def render(name: str, info: dict) -> str:
    return json.dumps(WORKFLOWS[name](info).to_json(name), indent=1, ensure_ascii=False) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    info = json.loads(OBJECT_INFO.read_text())
    stale = []
    for name in WORKFLOWS:
        text, path = render(name, info), OUT / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        sys.exit(f"out of date (run scripts/build_workflows.py): {stale}")
    if args.check:
        print(f"{len(WORKFLOWS)} workflows up to date")


if __name__ == "__main__":
    main()
