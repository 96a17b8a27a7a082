"""The bundled LongCat-Video-Avatar workflows (audio-driven talking video), built like the base
ones in ``build_workflows.py``, which registers them from ``AVATAR_WORKFLOWS``."""

from workflow_builder import Column, Workflow
from workflow_parts import SEED, UMT5, VAE, encode, vram_note

HF_AVATAR_15 = "https://huggingface.co/meituan-longcat/LongCat-Video-Avatar-1.5"
AVATAR_DIT = "LongCat-Video-Avatar-1.5/base_model/"  # the official sharded folder, as the loader lists it
DMD_LORA = {"name": "dmd_lora.safetensors", "directory": "loras",
            "url": f"{HF_AVATAR_15}/resolve/main/lora/dmd_lora.safetensors?download=true"}
WHISPER = {"name": "whisper_large_v3_fp16.safetensors", "directory": "audio_encoders",
           "url": "https://huggingface.co/Comfy-Org/HuMo_ComfyUI/resolve/main/split_files/audio_encoders/"
                  "whisper_large_v3_fp16.safetensors?download=true"}
FPS = 25.0  # Avatar 1.5
VRAM = """**VRAM**: not measured yet for Avatar. The 1.5 DiT has 15.9 B parameters: its weights
alone take 31.7 GB in bf16 (`weight_dtype` fp8_e4m3fn halves that), whisper-large-v3 3.1 GB
(fp16, offloaded after encoding) and umT5-XXL ~11 GB while encoding the prompt."""

SINGLE_PROMPT = ("A young woman with shoulder-length brown hair sits on a sofa in a softly lit living "
                 "room and talks to the camera, gesturing gently with her hands; she smiles between "
                 "sentences. Medium close-up, natural window light, realistic, sharp details.")
MULTI_PROMPT = ("Two friends sit side by side at a wooden table in a cozy podcast studio and talk "
                "with each other in turn; the woman on the left speaks with lively gestures, the man "
                "on the right listens, nods and answers. Warm light, microphones on stands, "
                "realistic, medium shot.")

DIT_NOTE = f"""## LongCat-Video-Avatar 1.5 DiT

The official release ships the Avatar 1.5 DiT as a sharded folder,
[`base_model/`]({HF_AVATAR_15}/tree/main/base_model) (bf16, ~32 GB; `base_model_int8/` is the
INT8 copy), so this loader has no download button. Put (or symlink) the folder under
`models/diffusion_models/LongCat-Video-Avatar-1.5/base_model/` and pick it here, e.g.

`huggingface-cli download meituan-longcat/LongCat-Video-Avatar-1.5 --include "base_model/*"
--local-dir models/diffusion_models/LongCat-Video-Avatar-1.5`

The DMD LoRA (8 steps, guidance 1), umT5, the Wan 2.1 VAE and whisper-large-v3 download from
this workflow's missing-models panel. See `docs/avatar.md` and `docs/avatar_audio.md`."""

AUDIO_NOTE = """## Audio

Load Audio takes any file ComfyUI reads (wav, mp3, flac, …), any sample rate, mono or stereo;
it is encoded at 16 kHz mono. Clean speech works best: the official demos separate the voice
from music first (not part of core ComfyUI).

`video_frames` 0 makes the video as long as the audio, rounded up to 93 + 80·k frames at 25 fps;
this workflow makes one 93-frame clip (3.7 s) from the start of the audio. The audio node's
`audio` output is the soundtrack, cut to the video."""


def _models(wf: Workflow, col: Column, lora: bool = True) -> dict:
    dit = col.push(wf.add("LongCatAvatarModelLoader", col.next(), {"model_name": AVATAR_DIT},
                          title="Load LongCat-Video-Avatar 1.5", width=380))
    out = {"dit": dit, "model": dit}
    if lora:
        out["model"] = col.push(wf.add("LongCatLoRA", col.next(), {"lora_name": DMD_LORA["name"], "strength": 1.0},
                                       title="DMD LoRA (8 steps)", width=380, models=[DMD_LORA]))
        wf.link(dit, out["model"], "model")
    out["clip"] = col.push(wf.add("CLIPLoader", col.next(), {"clip_name": UMT5["name"], "type": "wan"},
                                  width=380, models=[UMT5]))
    out["vae"] = col.push(wf.add("VAELoader", col.next(), {"vae_name": VAE["name"]}, width=380, models=[VAE]))
    out["audio_encoder"] = col.push(wf.add("AudioEncoderLoader", col.next(),
                                           {"audio_encoder_name": WHISPER["name"]}, width=380,
                                           models=[WHISPER], title="Load Audio Encoder (whisper-large-v3)"))
    note = col.push(wf.note(col.next(), DIT_NOTE, title="Avatar DiT folder", width=380, height=420))
    wf.group("Models", [n for n in out.values() if n is not dit] + [dit, note])
    return out


def _audio(wf: Workflow, col: Column, encoder, speakers: int, video_frames: int):
    """Load Audio per speaker and the audio embeds node; returns the embeds node."""
    loads = [col.push(wf.add("LoadAudio", col.next(), {"audio": f"speaker_{i + 1}.wav"}, width=380,
                             title=f"Speech of speaker {i + 1}")) for i in range(speakers)]
    embeds = col.push(wf.add("LongCatAvatarAudioEmbeds", col.next(),
                             {"video_frames": video_frames, "seed": 0, "multi_audio_type": "para"}, width=380))
    wf.link(encoder, embeds, "audio_encoder")
    wf.link(loads[0].out("AUDIO"), embeds, "audio")
    if speakers == 2:
        wf.link(loads[1].out("AUDIO"), embeds, "audio_2")
    wf.group("Audio", [*loads, embeds])
    return embeds


def _sampler(wf: Workflow, col: Column, models: dict, positive, embeds, image, title="LongCat Avatar Sampler"):
    node = col.push(wf.add("LongCatAvatarSampler", col.next(),
                           {"width": 832, "height": 480, "num_frames": 93, "schedule": "dmd", "steps": 8,
                            "text_cfg": 1.0, "audio_cfg": 1.0, "seed": SEED}, title=title, width=380))
    for source, name in ((models["model"], "model"), (positive, "positive"), (embeds.out("audio_embeds"), "audio_embeds"),
                         (models["vae"], "vae"), (image.out("IMAGE"), "image")):
        wf.link(source, node, name)
    return node


def _save(wf: Workflow, col: Column, images, embeds, prefix: str):
    video = col.push(wf.add("CreateVideo", col.next(), {"fps": FPS}))
    wf.link(images, video, "images")
    wf.link(embeds.out("audio"), video, "audio")
    save = col.push(wf.add("SaveVideo", col.next(), {"filename_prefix": prefix}, width=420))
    wf.link(video, save, "video")
    return video, save


def _talking(info: dict, speakers: int) -> Workflow:
    wf = Workflow(info)
    models = _models(wf, Column(0))
    p = Column(460)
    positive = encode(wf, p, models["clip"], SINGLE_PROMPT if speakers == 1 else MULTI_PROMPT, "Prompt")
    image = p.push(wf.add("LoadImage", p.next(), {"image": "example.png"}, width=420, title="Reference image"))
    wf.group("Prompt and reference image", [positive, image])
    a = Column(960)
    embeds = _audio(wf, a, models["audio_encoder"], speakers, video_frames=93)
    s = Column(1420)
    sampler = _sampler(wf, s, models, positive, embeds, image)
    decoded = s.push(wf.add("VAEDecode", s.next()))
    wf.link(sampler.out("LATENT"), decoded, "samples")
    wf.link(models["vae"], decoded, "vae")
    wf.group("Sample: DMD 8 steps, guidance 1", [sampler, decoded])
    o = Column(1880)
    video, save = _save(wf, o, decoded, embeds, f"LongCat/avatar_{'single' if speakers == 1 else 'two'}_speaker")
    wf.group("Save (25 fps, with the soundtrack)", [video, save])
    a.push(wf.note(a.next(), AUDIO_NOTE, title="Audio", width=380, height=330))
    return wf


def avatar_single(info: dict) -> Workflow:
    wf = _talking(info, 1)
    vram_note(wf, (-520, 0), "Talking video from one voice (Avatar 1.5, DMD 8 steps)",
              "A reference image, a prompt and speech make a 93-frame 480p clip at 25 fps: the "
              "official Avatar 1.5 setting with the DMD LoRA (8 steps, text and audio guidance 1, "
              "one DiT pass per step). The image becomes the first frame. Without the LoRA, use "
              "schedule normal, 50 steps, text_cfg 4 and audio_cfg 4 (3–5) and add a negative "
              "prompt.\n\n" + VRAM, height=480)
    return wf


def avatar_multi(info: dict) -> Workflow:
    wf = _talking(info, 2)
    vram_note(wf, (-520, 0), "Two speakers (Avatar 1.5, DMD 8 steps)",
              "Two voices drive the two people in the reference image. Without masks, speaker 1 is "
              "the left half and speaker 2 the right half of the image (official default). To place "
              "them yourself, paint each person in the mask editor of a Load Image with the same "
              "reference image and connect its MASK to `speaker_1_mask` / `speaker_2_mask`; masks "
              "of silent people go to `others_mask` (adds the official silent audio stream). "
              "`multi_audio_type`: para = both recordings play together (a dialogue recorded on two "
              "tracks), add = speaker 1's recording, then speaker 2's.\n\n" + VRAM, height=560)
    return wf


def avatar_long(info: dict) -> Workflow:
    """One 93-frame clip, then two extensions of 80 new frames each (253 frames, ~10 s)."""
    wf = Workflow(info)
    models = _models(wf, Column(0))
    p = Column(460)
    positive = encode(wf, p, models["clip"], SINGLE_PROMPT, "Prompt (every segment)")
    image = p.push(wf.add("LoadImage", p.next(), {"image": "example.png"}, width=420, title="Reference image"))
    wf.group("Prompt and reference image", [positive, image])
    a = Column(960)
    embeds = _audio(wf, a, models["audio_encoder"], 1, video_frames=93 + 80 * 2)
    s = Column(1420)
    first = _sampler(wf, s, models, positive, embeds, image, title="Segment 1: LongCat Avatar Sampler")
    frames = s.push(wf.add("VAEDecode", s.next()))
    wf.link(first.out("LATENT"), frames, "samples")
    wf.link(models["vae"], frames, "vae")
    wf.group("Segment 1: frames 0-92", [first, frames])
    previous_latent, previous_images, video = first.out("LATENT"), frames, frames
    for k in (2, 3):
        e = Column(1420 + 460 * (k - 1))
        extend = e.push(wf.add("LongCatAvatarExtend", e.next(),
                               {"schedule": "dmd", "steps": 8, "text_cfg": 1.0, "audio_cfg": 1.0, "seed": SEED,
                                "ref_index": 10, "mask_frame_range": 3, "use_kv_cache": True},
                               title=f"Segment {k}: LongCat Avatar Extend", width=380))
        for source, name in ((models["model"], "model"), (positive, "positive"),
                             (embeds.out("audio_embeds"), "audio_embeds"), (models["vae"], "vae"),
                             (previous_latent, "previous_latent"), (previous_images, "previous_images")):
            wf.link(source, extend, name)
        joined = e.push(wf.add("ImageBatch", e.next(), title=f"Append segment {k}"))
        wf.link(video, joined, "image1")
        wf.link(extend.out("new_frames"), joined, "image2")
        wf.group(f"Segment {k}: 80 new frames", [extend, joined])
        previous_latent, previous_images, video = extend.out("LATENT"), extend.out("new_frames"), joined
    o = Column(1420 + 460 * 3)
    save_nodes = _save(wf, o, video, embeds, "LongCat/avatar_long")
    wf.group("Save (25 fps, with the soundtrack)", list(save_nodes))
    a.push(wf.note(a.next(), AUDIO_NOTE.replace("this workflow makes one 93-frame clip (3.7 s) from the start of the audio",
                                           "this workflow sets 253 frames (10.1 s): one clip and two extensions"),
            title="Audio", width=380, height=330))
    vram_note(wf, (-520, 0), "Long talking video (Avatar 1.5, DMD 8 steps)",
              "The official long-video loop: a 93-frame clip, then segments of 93 frames whose first "
              "13 overlap the previous one (re-encoded through the VAE) with the first clip's image "
              "latent as a fixed reference at RoPE position 10 (ref_index; 0-24 for consistency, 30 or "
              "-10 against repeated actions). Each segment adds 80 frames. For more, copy a segment "
              "group, chain it and raise the audio node's `video_frames` by 80.\n\n" + VRAM, height=560)
    return wf


AVATAR_WORKFLOWS = {
    "longcat_avatar_1.5_single_speaker_dmd.json": avatar_single,
    "longcat_avatar_1.5_two_speakers_dmd.json": avatar_multi,
    "longcat_avatar_1.5_long_video_extend.json": avatar_long,
}
