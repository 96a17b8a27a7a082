"""The Avatar audio recipes on ComfyUI's own Whisper and wav2vec2 modules (tiny, in-process):
equal to the official LongCat recipe's outputs (tests/data/avatar_audio_official.safetensors,
made by the official code on the same tiny encoders and signals) and, for ≤ 30 s Whisper, to
the stock encoder forward (needs ``COMFYUI_DIR``)."""

import sys
from pathlib import Path

import pytest
import torch
from longcat_pack.longcat.avatar import audio as A
from safetensors.torch import load_file

import availability
import tiny_audio as T

pytestmark = pytest.mark.comfyui

OFFICIAL = Path(__file__).resolve().parents[1] / "data" / "avatar_audio_official.safetensors"


@pytest.fixture(scope="module")
def comfy_audio():
    sys.path.insert(0, availability.comfyui_dir("the Avatar audio recipe tests"))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.ops
    from comfy.audio_encoders.wav2vec2 import Wav2Vec2Model
    from comfy.audio_encoders.whisper import WhisperLargeV3

    ops = comfy.ops.manual_cast
    return {"whisper": T.seeded(WhisperLargeV3(**T.WHISPER, dtype=torch.float32, operations=ops), 1),
            "wav2vec2": T.seeded(Wav2Vec2Model(**T.WAV2VEC2, dtype=torch.float32, operations=ops), 3)}


@pytest.fixture(scope="module")
def official():
    return load_file(str(OFFICIAL))


@pytest.mark.parametrize("seconds, key", [(3.72, "whisper_3_72"), (31.0, "whisper_31_0")])
def test_whisper_recipe_equals_official(comfy_audio, official, seconds, key):
    """1.5: one 30 s chunk, and two (31 s → 775 frames at 25 fps)."""
    wave = A.pad_to_seconds(torch.from_numpy(T.speech_like(seconds, seed=2)), A.generation_seconds(93, 25))
    ours = A.whisper_features(comfy_audio["whisper"], wave)
    assert ours.shape == official[key].shape == (int(wave.shape[0] / 16000 * 25), 5, 8)
    # fp32 rounding through 32 layers (values up to ~14); the torchaudio and numpy log-mels differ by 2e-5
    torch.testing.assert_close(ours, official[key], atol=2e-4, rtol=0)


def test_wav2vec2_two_speakers_and_silent_stream_equal_official(comfy_audio, official):
    """1.0 two-speaker run of the official script (para, one 93-frame segment, the silent third
    stream, numpy noise floor drawn in stream order from one seed): features and 5-frame windows."""
    streams = [torch.from_numpy(T.speech_like(2.0, seed=5)), torch.from_numpy(T.speech_like(2.0, seed=6)),
               torch.zeros(32000, dtype=torch.float64)]
    embeds = A.encode_streams(comfy_audio["wav2vec2"], streams, video_frames=93, seed=11,
                              masks=torch.ones(4, 8, 8))
    expected = A.frame_windows(official["wav2vec2_streams"], stride=2, video_frames=93)
    assert embeds.version == "1.0" and embeds.fps == 16.0
    assert embeds.windows.shape == expected.shape == (3, 93, 5, 3, 32)
    torch.testing.assert_close(embeds.windows, expected, atol=2e-5, rtol=0)


def test_whisper_up_to_30s_equals_the_stock_encoder_forward(comfy_audio):
    """For ≤ 30 s the chunked recipe is the stock forward (log-mel padded to 30 s + encoder) on
    the loudness-normalized wave, then the 1.5 layer groups resampled to 25 Hz."""
    model = comfy_audio["whisper"]
    wave = torch.from_numpy(T.speech_like(7.0, seed=8))
    frames = 7 * 25
    with torch.no_grad():
        _, states = model(A.normalize_loudness(wave).float()[None, None])
    states = torch.stack(states, 0)[:, 0, : 2 * frames]  # [33, 350, C]
    groups = [states[0:8].mean(0), states[8:16].mean(0), states[16:24].mean(0), states[24:32].mean(0), states[32]]
    expected = torch.stack([torch.nn.functional.interpolate(g.T[None], size=frames, mode="linear",
                                                            align_corners=True)[0].T for g in groups], 1)
    torch.testing.assert_close(A.whisper_features(model, wave), expected, atol=1e-5, rtol=0)
