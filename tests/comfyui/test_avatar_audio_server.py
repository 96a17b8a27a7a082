"""LongCat Avatar Audio Embeds in a real ComfyUI server, fed by the stock LoadAudio and
AudioEncoderLoader (a random full-size chinese-wav2vec2-base, Avatar 1.0): one speaker equals
the recipe run in-process on the same file and clip; two speakers with mask boxes, a 44.1 kHz
stereo second speaker and the soundtrack output; a misplaced mask fails with one line naming
the input (needs ``COMFYUI_DIR``)."""

import subprocess
import sys

import pytest
import torch
from comfy_server import comfy_python
from longcat_pack.longcat.avatar import audio as A
from safetensors import safe_open

import tiny_audio

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def audio_server(comfy_models, comfy_server):
    base = comfy_models["base"]
    subprocess.run([comfy_python(), tiny_audio.__file__, str(base / "models"), str(base / "input")],
                   cwd=comfy_models["comfyui_dir"], check=True)
    return comfy_server


def _prompt(name, extra=None, **embeds_inputs):
    prompt = {
        "1": {"class_type": "LoadAudio", "inputs": {"audio": "speaker_1.wav"}},
        "2": {"class_type": "AudioEncoderLoader", "inputs": {"audio_encoder_name": tiny_audio.WAV2VEC2_BASE_FILE}},
        "3": {"class_type": "LongCatAvatarAudioEmbeds",
              "inputs": {"audio_encoder": ["2", 0], "audio": ["1", 0], "video_frames": 0, "seed": 3,
                         "multi_audio_type": "para", **embeds_inputs}},
        "4": {"class_type": "LongCatTestAudioEmbedsSave", "inputs": {"audio_embeds": ["3", 0], "name": name}},
        "5": {"class_type": "SaveAudio", "inputs": {"audio": ["3", 1], "filename_prefix": f"avatar_{name}"}},
    }
    prompt.update(extra or {})
    return prompt


def _saved(server, name):
    with safe_open(str(server.base_dir / "output" / f"{name}.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_one_speaker_equals_the_recipe_in_process(audio_server, comfy_models):
    audio_server.run(_prompt("single"))
    tensors, meta = _saved(audio_server, "single")
    assert meta == {"version": "1.0", "fps": "16.0"}
    assert tensors["windows"].shape == (1, 93, 5, 12, 768)  # 2 s of audio → one 93-frame clip

    sys.path.insert(0, comfy_models["comfyui_dir"])
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.audio_encoders.audio_encoders as encoders
    import comfy.model_patcher  # noqa: F401  (audio_encoders uses it without importing it)
    import comfy.utils
    from comfy_extras.nodes_audio import load

    encoder = encoders.load_audio_encoder_from_sd(comfy.utils.load_torch_file(
        str(comfy_models["base"] / "models" / "audio_encoders" / tiny_audio.WAV2VEC2_BASE_FILE)))
    waveform, rate = load(str(comfy_models["base"] / "input" / "speaker_1.wav"))
    assert rate == 16000 and waveform.shape[0] == 1
    expected = A.encode_streams(encoder.model, [waveform[0].double()], video_frames=0, seed=3)
    torch.testing.assert_close(tensors["windows"], expected.windows, atol=1e-5, rtol=0)


def _box(node, x, y, w, h):
    return {f"{node}a": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 64, "height": 32}},
            f"{node}b": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": w, "height": h}},
            node: {"class_type": "MaskComposite", "inputs": {"destination": [f"{node}a", 0], "source": [f"{node}b", 0],
                                                            "x": x, "y": y, "operation": "add"}}}


def test_two_speakers_with_masks_and_a_stereo_44k_second_speaker(audio_server):
    extra = {"6": {"class_type": "LoadAudio", "inputs": {"audio": "speaker_2.wav"}},
             **_box("7", 2, 4, 24, 24), **_box("8", 36, 4, 24, 24)}
    entry = audio_server.run(_prompt("two", extra, audio_2=["6", 0], multi_audio_type="add",
                                     speaker_1_mask=["7", 0], speaker_2_mask=["8", 0]))
    tensors, meta = _saved(audio_server, "two")
    assert tensors["windows"].shape == (2, 93, 5, 12, 768)  # 2 s then 3 s (add) = 5 s → 93 frames
    masks = tensors["masks"]
    assert masks.shape == (3, 32, 64)
    assert masks[0, 4:28, 2:26].min() == 1 and masks[0].sum() == 24 * 24
    assert masks[1, 4:28, 36:60].min() == 1 and masks[1].sum() == 24 * 24
    assert torch.equal(masks[2], 1 - masks[0] - masks[1])
    # the two streams differ: speaker 1 talks first, speaker 2 after
    assert not torch.allclose(tensors["windows"][0], tensors["windows"][1])
    # the soundtrack: speaker 1 (16 kHz mono) then speaker 2 (44.1 kHz stereo, resampled), in
    # stereo at speaker 1's rate, cut to the video: 93 frames at 16 fps = 5.8125 s = 93000 samples
    import av

    saved = entry["outputs"]["5"]["audio"][0]
    with av.open(str(audio_server.base_dir / "output" / saved["subfolder"] / saved["filename"])) as f:
        stream = f.streams.audio[0]
        assert (stream.rate, stream.channels) == (16000, 2)
        assert sum(frame.samples for frame in f.decode(stream)) == 93000


def test_a_mask_without_a_second_speaker_names_the_input(audio_server):
    prompt = _prompt("bad", _box("7", 2, 4, 24, 24), speaker_1_mask=["7", 0])
    entry = audio_server.wait(audio_server.queue_prompt(prompt))
    assert entry["status"]["status_str"] == "error"
    messages = str(entry["status"]["messages"])
    assert "speaker_1_mask is given but audio_2 is not" in messages


def _tiny_avatar_10(folder):
    """A tiny Avatar DiT that takes Avatar 1.0 audio features (12 x 768), as an official sharded
    folder with config.json (one shard)."""
    import json

    from longcat_pack.longcat.avatar.dit import LongCatAvatarDiT
    from safetensors.torch import save_file
    from tiny_models import DIT_CONFIG

    torch.manual_seed(5)
    config = {**DIT_CONFIG, "audio_block": 12, "audio_channel": 768, "intermediate_dim": 16, "output_dim": 16,
              "context_tokens": 4}
    state = {k: v.detach().contiguous() for k, v in LongCatAvatarDiT(**config).state_dict().items()}
    folder.mkdir(exist_ok=True)
    name = "diffusion_pytorch_model-00001-of-00001.safetensors"
    save_file(state, str(folder / name))
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": dict.fromkeys(state, name)}))
    (folder / "config.json").write_text(json.dumps({"audio_block": 12, "audio_channel": 768}))


def test_stock_audio_nodes_drive_the_avatar_sampler(audio_server, comfy_models, object_info):
    """LoadAudio → AudioEncoderLoader → LongCat Avatar Audio Embeds → LongCat Avatar Sampler →
    VAEDecode → CreateVideo with the embeds node's soundtrack → SaveVideo, on a tiny Avatar DiT."""
    if "LongCatAvatarSampler" not in object_info:
        pytest.skip("LongCat Avatar Sampler is not in this tree (it comes with the avatar-model branch)")
    _tiny_avatar_10(comfy_models["base"] / "models" / "diffusion_models" / "longcat_avatar_tiny_v10")
    # SaveVideo's codec is a plain combo up to ComfyUI 0.8 and nested under format in 0.33
    codec = "codec" if "codec" in object_info["SaveVideo"]["input"]["required"] else "format.codec"
    create_inputs = {**object_info["CreateVideo"]["input"]["required"], **object_info["CreateVideo"]["input"].get("optional", {})}
    bit_depth = {"bit_depth": 8} if "bit_depth" in create_inputs else {}  # 0.33 adds it
    prompt = _prompt("e2e", {
        "10": {"class_type": "LongCatAvatarModelLoader", "inputs": {"model_name": "longcat_avatar_tiny_v10/",
                                                                    "weight_dtype": "default"}},
        "11": {"class_type": "LongCatTestTextEncode", "inputs": {"text": "a person talks", "tokens": 6}},
        "12": {"class_type": "VAELoader", "inputs": {"vae_name": "wan_2.1_vae_random.safetensors"}},
        "13": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 8421504}},
        "14": {"class_type": "LongCatAvatarSampler", "inputs": {
            "model": ["10", 0], "positive": ["11", 0], "audio_embeds": ["3", 0], "vae": ["12", 0], "image": ["13", 0],
            "width": 64, "height": 64, "num_frames": 29, "schedule": "dmd", "steps": 8, "shift": 12.0,
            "text_cfg": 1.0, "audio_cfg": 1.0, "seed": 7}},
        "15": {"class_type": "VAEDecode", "inputs": {"samples": ["14", 0], "vae": ["12", 0]}},
        "16": {"class_type": "CreateVideo", "inputs": {"images": ["15", 0], "audio": ["3", 1], "fps": 16.0,
                                                       **bit_depth}},
        "17": {"class_type": "SaveVideo", "inputs": {"video": ["16", 0], "filename_prefix": "avatar_e2e",
                                                     "format": "auto", codec: "auto"}},
    })
    prompt["3"]["inputs"]["video_frames"] = 29
    status, body = audio_server.post("/prompt", {"prompt": prompt, "client_id": "avatar-audio"})
    assert status == 200 and not body.get("node_errors"), body
    entry = audio_server.wait(body["prompt_id"], timeout=900)
    assert entry["status"]["status_str"] == "success", entry["status"]
    tensors, _ = _saved(audio_server, "e2e")
    assert tensors["windows"].shape == (1, 29, 5, 12, 768)
    outputs = sorted((audio_server.base_dir / "output").rglob("*"))
    videos = [p for p in outputs if p.name.startswith("avatar_e2e") and p.suffix in (".mp4", ".mkv", ".webm")]
    assert len(videos) == 1, outputs
    video = videos[0]
    import av

    with av.open(str(video)) as f:
        kinds = {s.type for s in f.streams}
        frames = sum(1 for _ in f.decode(video=0))
    assert kinds == {"video", "audio"} and frames == 29
