"""Tiny Whisper / wav2vec2 audio encoders with ComfyUI's module layout and a speech-like test
signal, all generated from numpy's seeded legacy RandomState (the same numbers on every torch).

Whisper keeps whisper-large-v3's 32 layers and 128 mel bins (the Avatar 1.5 grouping is
hard-wired to them) at width 8; wav2vec2 keeps ComfyUI's fixed 512-channel CNN and 128-tap
positional convolution at width 32 with 3 layers (Avatar 1.0 then gives 3 × 32 features).
"""

import numpy as np
import torch

WHISPER = dict(n_mels=128, n_audio_ctx=1500, n_audio_state=8, n_audio_head=2, n_audio_layer=32)
WAV2VEC2 = dict(embed_dim=32, num_heads=2, num_layers=3, conv_norm=False, conv_bias=False,
                do_normalize=False, do_stable_layer_norm=False)


def seeded_parameters(module: torch.nn.Module, seed: int) -> dict:
    """Non-trivial values for every parameter of ``module`` (norm weights near 1, small biases,
    weights scaled by 1/sqrt(fan-in)); buffers (mel filters, windows) are left alone."""
    rng = np.random.RandomState(seed)
    values = {}
    for name, p in sorted(module.named_parameters()):
        shape = tuple(p.shape)
        x = rng.randn(*shape)
        if name.endswith("bias"):
            x = 0.1 * x
        elif p.ndim == 1:
            x = 1.0 + 0.1 * x
        else:
            x = x / np.sqrt(max(1, int(np.prod(shape[1:]))))
        values[name] = torch.from_numpy(x).float()
    return values


def seeded(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    module.load_state_dict(seeded_parameters(module, seed), strict=False)
    return module.eval()


def speech_like(seconds: float, seed: int = 0, rate: int = 16000) -> np.ndarray:
    """Voiced, syllable-like float64 signal: a gliding harmonic tone under a 4 Hz envelope, with
    pauses and a little noise."""
    rng = np.random.RandomState(seed)
    t = np.arange(int(seconds * rate)) / rate
    pitch = 140 + 40 * np.sin(2 * np.pi * 0.3 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) * (np.sin(2 * np.pi * 0.25 * t) > -0.5)
    return 0.2 * voice * envelope + 0.003 * rng.randn(t.shape[0])


WAV2VEC2_BASE_FILE = "chinese-wav2vec2-base_random_fp16.safetensors"


def write_server_files(models_dir: str, input_dir: str) -> None:
    """A random full-size wav2vec2-base (what the stock AudioEncoderLoader detects as
    chinese-wav2vec2-base, fp16, ~190 MB) and two speech-like WAVs (``write_wavs``).
    Run with ComfyUI's Python, cwd = the ComfyUI tree."""
    from pathlib import Path

    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before comfy.model_management probes the device
    import comfy.ops
    from comfy.audio_encoders.wav2vec2 import Wav2Vec2Model
    from safetensors.torch import save_file

    folder = Path(models_dir) / "audio_encoders"
    folder.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        model = Wav2Vec2Model(embed_dim=768, num_heads=12, num_layers=12, conv_norm=False, conv_bias=False,
                              do_normalize=False, do_stable_layer_norm=False, operations=comfy.ops.manual_cast)
    params = seeded_parameters(model, 9)
    save_file({k: v.half() for k, v in params.items()}, str(folder / WAV2VEC2_BASE_FILE))
    write_wavs(input_dir)


def write_wavs(input_dir: str) -> None:
    """speaker_1.wav (2 s, 16 kHz mono) and speaker_2.wav (3 s, 44.1 kHz stereo), speech-like."""
    import wave
    from pathlib import Path

    Path(input_dir).mkdir(parents=True, exist_ok=True)
    for name, seconds, rate, channels, seed in (("speaker_1.wav", 2.0, 16000, 1, 11), ("speaker_2.wav", 3.0, 44100, 2, 12)):
        signal = speech_like(seconds, seed=seed, rate=rate)
        frames = np.repeat(signal[:, None], channels, 1) * [1.0, 0.5][:channels]
        with wave.open(str(Path(input_dir) / name), "wb") as f:
            f.setnchannels(channels)
            f.setsampwidth(2)
            f.setframerate(rate)
            f.writeframes((np.clip(frames, -1, 1) * 32767).astype("<i2").tobytes())


if __name__ == "__main__":
    import sys

    sys.path.insert(0, ".")  # the ComfyUI tree (cwd)
    write_server_files(sys.argv[1], sys.argv[2])
