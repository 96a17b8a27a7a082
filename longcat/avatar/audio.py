"""Avatar audio features: the official LongCat encoding recipes over a loaded audio encoder.

The encoder is passed in (no ComfyUI import here); its sub-modules are called the way ComfyUI's
``comfy.audio_encoders`` builds them:

- Whisper (Avatar 1.5): ``model.feature_extractor(audio [1, 1, S]) -> log-mel [1, M, 3000]``
  (pads or cuts to 30 s) and ``model.encoder(mel) -> (out, states)``, 33 states for
  whisper-large-v3 (input, 31 layer outputs, final layer norm).
- wav2vec2 (Avatar 1.0): ``model.feature_extractor(x [1, S]) -> [1, T, 512]`` (the CNN, ~50 Hz),
  ``model.feature_projection``, ``model.encoder(h) -> (out, states)`` with ``states[1:]`` the
  transformer layer outputs.

Recipes (docs/avatar.md, "Audio"): every stream is 16 kHz mono float, zero-padded to the
generation length, then
- 1.5: loudness −23 LUFS; log-mel and encoder per 30 s chunk; hidden states grouped as means of
  layers [0:8], [8:16], [16:24], [24:32] and the last state; linear interpolation (corners
  aligned) from 50 Hz to exactly ``int(seconds·25)`` frames.
- 1.0: loudness −23 LUFS; a −45 dBFS Gaussian noise floor; a 3rd-order Butterworth low-pass at
  3 kHz; zero mean / unit variance; CNN; linear interpolation to ``int(seconds·32)`` frames
  *before* the transformer; the 12 layer outputs.
Video frame f then takes the features at ``stride·f + (−2..2)`` clamped to the feature range
(stride 2 for 1.0, 1 for 1.5).
"""

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .embeds import AUDIO_WINDOW, AvatarAudioEmbeds

SAMPLE_RATE = 16000
TARGET_LUFS = -23.0
SEGMENT_FRAMES = 93  # frames of one generated clip
SEGMENT_STEP = 80  # new frames per continuation segment (93 minus the 13 overlap frames)


@dataclass(frozen=True)
class Recipe:
    feature_rate: int  # audio features per second
    stride: int  # audio features per video frame
    fps: int  # video frames per second


RECIPES = {"1.0": Recipe(feature_rate=32, stride=2, fps=16), "1.5": Recipe(feature_rate=25, stride=1, fps=25)}

WHISPER_CHUNK_SAMPLES = 30 * SAMPLE_RATE  # the log-mel and encoder run per 30 s
WHISPER_STATE_RATE = 50  # encoder output frames per second
WHISPER_GROUPS = ((0, 8), (8, 16), (16, 24), (24, 32), (32, 33))  # averaged hidden states


# ---------------------------------------------------------------------------------------------
# Filters (float64; lfilter semantics: causal, zero initial state)

def biquad(kind: str, gain_db: float, q: float, fc: float, rate: float) -> tuple[np.ndarray, np.ndarray]:
    """RBJ cookbook biquad ``(b, a)`` normalized by a0, as BS.1770 meters build the K-weighting."""
    amp = 10 ** (gain_db / 40.0)
    w0 = 2.0 * np.pi * (fc / rate)
    alpha = np.sin(w0) / (2.0 * q)
    cos = np.cos(w0)
    if kind == "high_shelf":
        root = 2 * np.sqrt(amp) * alpha
        b = [amp * ((amp + 1) + (amp - 1) * cos + root), -2 * amp * ((amp - 1) + (amp + 1) * cos),
             amp * ((amp + 1) + (amp - 1) * cos - root)]
        a = [(amp + 1) - (amp - 1) * cos + root, 2 * ((amp - 1) - (amp + 1) * cos), (amp + 1) - (amp - 1) * cos - root]
    elif kind == "high_pass":
        b = [(1 + cos) / 2, -(1 + cos), (1 + cos) / 2]
        a = [1 + alpha, -2 * cos, 1 - alpha]
    else:
        raise ValueError(f"unknown biquad kind {kind!r}")
    b, a = np.array(b), np.array(a)
    return b / a[0], a / a[0]


def butterworth_lowpass(order: int, cutoff: float, rate: float) -> tuple[np.ndarray, np.ndarray]:
    """Digital Butterworth low-pass ``(b, a)``: analog prototype at the prewarped cutoff, then the
    bilinear transform (all zeros land at Nyquist)."""
    warped = 4.0 * np.tan(np.pi * cutoff / rate)  # 2·fs·tan(π·Wn/fs) with fs = 2, Wn = cutoff/(rate/2)
    analog_poles = -np.exp(1j * np.pi * np.arange(-order + 1, order, 2) / (2 * order)) * warped
    poles = (4.0 + analog_poles) / (4.0 - analog_poles)
    gain = warped ** order * np.real(1.0 / np.prod(4.0 - analog_poles))
    return gain * np.poly(-np.ones(order)), np.real(np.poly(poles))


def _impulse_response(b: np.ndarray, a: np.ndarray, rel_tol: float = 1e-20, max_len: int = 1 << 22) -> np.ndarray:
    """Impulse response of a stable IIR filter, run until its tail is below ``rel_tol`` of the peak."""
    order = max(len(a), len(b)) - 1
    b = np.pad(b, (0, order + 1 - len(b)))
    a = np.pad(a, (0, order + 1 - len(a)))
    state = np.zeros(order)  # transposed direct form II, as lfilter
    out, peak, quiet = [], 0.0, 0
    for n in range(max_len):
        x = 1.0 if n == 0 else 0.0
        y = b[0] * x + state[0]
        for i in range(order - 1):
            state[i] = b[i + 1] * x + state[i + 1] - a[i + 1] * y
        state[order - 1] = b[order] * x - a[order] * y
        out.append(y)
        peak = max(peak, abs(y))
        quiet = quiet + 1 if abs(y) <= rel_tol * peak and np.all(np.abs(state) <= rel_tol * peak) else 0
        if quiet > order:
            return np.array(out)
    raise ValueError("filter does not decay; is it stable?")


def iir_filter(b: np.ndarray, a: np.ndarray, x: torch.Tensor) -> torch.Tensor:
    """``scipy.signal.lfilter(b, a, x)`` on a 1-D float64 tensor, as an FFT convolution with the
    filter's impulse response (cut where it has decayed below 1e-20 of its peak)."""
    h = torch.from_numpy(_impulse_response(b, a)).to(x)
    n = x.shape[0] + h.shape[0] - 1
    size = 1 << (n - 1).bit_length()
    y = torch.fft.irfft(torch.fft.rfft(x, size) * torch.fft.rfft(h, size), size)
    return y[: x.shape[0]]


# ---------------------------------------------------------------------------------------------
# Loudness (ITU-R BS.1770-4 integrated loudness, as the pyloudnorm meter the official code uses)

def integrated_loudness(x: torch.Tensor, rate: int = SAMPLE_RATE) -> float:
    """Gated integrated loudness in LUFS of mono ``x`` (−inf for silence).

    K-weighting (high shelf +4 dB at 1.5 kHz, then high-pass at 38 Hz, RBJ biquads), 400 ms
    blocks every 100 ms, each block's mean square over 400 ms, absolute gate −70 LUFS, then a
    relative gate 10 LU below the absolutely gated loudness (strictly above both).
    """
    x = x.double()
    block, step = 0.400, 1.0 - 0.75
    if x.shape[0] < block * rate:
        raise ValueError(f"audio of {x.shape[0]} samples is shorter than one 400 ms loudness block")
    for kind, gain_db, q, fc in (("high_shelf", 4.0, 1 / np.sqrt(2), 1500.0), ("high_pass", 0.0, 0.5, 38.0)):
        x = iir_filter(*biquad(kind, gain_db, q, fc, rate), x)
    seconds = x.shape[0] / rate
    num_blocks = int(round((seconds - block) / (block * step))) + 1
    energy = torch.cat([x.new_zeros(1), torch.cumsum(x * x, 0)])
    lower = [int(block * (j * step) * rate) for j in range(num_blocks)]
    upper = [min(int(block * (j * step + 1) * rate), x.shape[0]) for j in range(num_blocks)]
    z = (energy[upper] - energy[lower]) / (block * rate)
    level = -0.691 + 10.0 * torch.log10(z)
    above_abs = level >= -70.0
    if not bool(above_abs.any()):
        return float("-inf")
    relative_gate = -0.691 + 10.0 * math.log10(float(z[above_abs].mean())) - 10.0
    gated = (level > relative_gate) & (level > -70.0)
    if not bool(gated.any()):
        return float("-inf")
    return -0.691 + 10.0 * math.log10(float(z[gated].mean()))


def normalize_loudness(x: torch.Tensor, target: float = TARGET_LUFS, rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Scale ``x`` (float64) to ``target`` LUFS; left as is when |loudness| > 100 (silence)."""
    loudness = integrated_loudness(x, rate)
    if abs(loudness) > 100:
        return x
    return x * 10.0 ** ((target - loudness) / 20.0)


# ---------------------------------------------------------------------------------------------
# Encoders

def encoder_version(model) -> str:
    """"1.5" for a Whisper encoder, "1.0" for wav2vec2 (ComfyUI's audio encoder modules)."""
    if hasattr(model, "feature_projection"):
        return "1.0"
    if hasattr(getattr(model, "encoder", None), "embed_positions"):
        return "1.5"
    raise ValueError(f"LongCat Avatar takes a Whisper (1.5) or wav2vec2 (1.0) audio encoder, got "
                     f"{type(model).__name__}")


def _interpolate(features: torch.Tensor, length: int) -> torch.Tensor:
    """``[T, C]`` → ``[length, C]``, linear with aligned corners (the official resampling)."""
    return F.interpolate(features.T[None], size=length, mode="linear", align_corners=True)[0].T


def whisper_features(model, wave: torch.Tensor, device=None, on_chunk: Callable[[], None] | None = None) -> torch.Tensor:
    """Avatar 1.5 features ``[int(seconds·25), 5, C]`` of 16 kHz mono ``wave`` (float64)."""
    frames = int(wave.shape[0] / SAMPLE_RATE * RECIPES["1.5"].feature_rate)
    wave = normalize_loudness(wave).float()
    grouped = []
    for start in range(0, wave.shape[0], WHISPER_CHUNK_SAMPLES):
        chunk = wave[start:start + WHISPER_CHUNK_SAMPLES].to(device)
        mel = model.feature_extractor(chunk[None, None])
        _, states = model.encoder(mel.float())
        if len(states) != 33:
            raise ValueError(f"LongCat Avatar 1.5 needs whisper-large-v3 (32 encoder layers, 33 hidden states); "
                             f"this encoder gives {len(states)}")
        stacked = torch.stack([s.float() for s in states], 0)[:, 0]  # [33, 1500, C]
        grouped.append(torch.stack([stacked[a:b].mean(0) for a, b in WHISPER_GROUPS], 1).cpu())
        if on_chunk is not None:
            on_chunk()
    states = torch.cat(grouped, 0)[: 2 * frames]  # 50 Hz
    return torch.stack([_interpolate(states[:, g], frames) for g in range(len(WHISPER_GROUPS))], 1)


def lowpass_3khz(x: torch.Tensor) -> torch.Tensor:
    """3rd-order Butterworth low-pass at 3 kHz on a 16 kHz float64 signal (1.0's transient smoothing)."""
    return iir_filter(*butterworth_lowpass(3, 3000.0, SAMPLE_RATE), x)


def noise_floor(num_samples: int, rng: np.random.RandomState, db: float = -45.0) -> torch.Tensor:
    """Gaussian noise at ``db`` dBFS (float64), drawn like ``np.random.randn``."""
    return torch.from_numpy(rng.randn(num_samples) * 10 ** (db / 20))


def zero_mean_unit_var(x: torch.Tensor) -> torch.Tensor:
    """``(x − mean) / sqrt(var + 1e-7)`` with the population variance, in float32."""
    x = x.float()
    return (x - x.mean()) / torch.sqrt(x.var(correction=0) + 1e-7)


def wav2vec2_features(model, wave: torch.Tensor, rng: np.random.RandomState, device=None) -> torch.Tensor:
    """Avatar 1.0 features ``[int(seconds·32), L, C]`` of 16 kHz mono ``wave`` (float64)."""
    frames = int(wave.shape[0] / SAMPLE_RATE * RECIPES["1.0"].feature_rate)
    wave = normalize_loudness(wave)
    wave = lowpass_3khz(wave + noise_floor(wave.shape[0], rng))
    x = zero_mean_unit_var(wave).to(device)[None]
    cnn = model.feature_extractor(x).float()  # [1, T50, 512]
    cnn = _interpolate(cnn[0], frames)[None]
    _, states = model.encoder(model.feature_projection(cnn))
    return torch.stack([s.float()[0] for s in states[1:]], 1).cpu()


# ---------------------------------------------------------------------------------------------
# Alignment with the video

def generation_seconds(video_frames: int, fps: int) -> float:
    """Seconds the padded audio must last for ``video_frames`` output frames.

    Written as the official scripts do for 93 + 80·k frames (93/fps + k·80/fps) so the padding
    sample count is the same to the sample.
    """
    extra, rest = divmod(video_frames - SEGMENT_FRAMES, SEGMENT_STEP)
    if video_frames >= SEGMENT_FRAMES and rest == 0:
        return SEGMENT_FRAMES / fps + extra * SEGMENT_STEP / fps
    return video_frames / fps


def frames_for_audio(num_samples: int, fps: int) -> int:
    """The shortest official output (93 + 80·k frames) that covers ``num_samples`` of 16 kHz audio."""
    needed = math.ceil(num_samples / SAMPLE_RATE * fps)
    return SEGMENT_FRAMES + SEGMENT_STEP * max(0, math.ceil((needed - SEGMENT_FRAMES) / SEGMENT_STEP))


def pad_to_seconds(wave: torch.Tensor, seconds: float) -> torch.Tensor:
    """Append zeros up to ``ceil((seconds − len/16000)·16000)`` samples, as the official scripts."""
    missing = math.ceil((seconds - wave.shape[0] / SAMPLE_RATE) * SAMPLE_RATE)
    return F.pad(wave, (0, missing)) if missing > 0 else wave


def frame_windows(features: torch.Tensor, stride: int, video_frames: int, start: int = 0) -> torch.Tensor:
    """``[S, T, L, C]`` features → ``[S, video_frames, 5, L, C]``: video frame f takes the features at
    ``stride·(start + f) + (−2..2)``, clamped to ``[0, T − 1]`` (edges repeat the first/last)."""
    half = AUDIO_WINDOW // 2
    centres = stride * (start + torch.arange(video_frames))
    index = (centres[:, None] + torch.arange(-half, half + 1)[None]).clamp(0, features.shape[1] - 1)
    return features[:, index]


def speaker_tracks(first: torch.Tensor, second: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Two speakers' 16 kHz tracks on one timeline.

    ``para``: both at once (the shorter is zero-padded; the official scripts require equal lengths).
    ``add``: speaker 1 speaks, then speaker 2 (each silent during the other's turn).
    """
    if mode == "para":
        length = max(first.shape[0], second.shape[0])
        return F.pad(first, (0, length - first.shape[0])), F.pad(second, (0, length - second.shape[0]))
    if mode == "add":
        return F.pad(first, (0, second.shape[0])), F.pad(second, (first.shape[0], 0))
    raise ValueError(f"multi_audio_type must be 'para' or 'add', got {mode!r}")


def encode_streams(model, streams: list[torch.Tensor], video_frames: int, seed: int = 0, device=None,
                   masks: torch.Tensor | None = None,
                   progress: Callable[[int, int], None] | None = None) -> AvatarAudioEmbeds:
    """Encode 16 kHz mono streams (one per speaker, plus an optional silent stream) for
    ``video_frames`` output frames (0 = the shortest official length that covers the audio).

    Every stream is zero-padded to the generation length first; a stream longer than that is
    encoded whole (the official scripts do the same) and only its start is used.
    ``seed`` seeds 1.0's noise floor, drawn per stream in order (one RandomState).
    """
    version = encoder_version(model)
    recipe = RECIPES[version]
    longest = max(s.shape[0] for s in streams)
    if video_frames == 0:
        video_frames = frames_for_audio(longest, recipe.fps)
    seconds = generation_seconds(video_frames, recipe.fps)
    streams = [pad_to_seconds(s.double(), seconds) for s in streams]
    if len({s.shape[0] for s in streams}) != 1:
        raise ValueError("all audio streams must have the same length after padding")
    chunks = math.ceil(streams[0].shape[0] / WHISPER_CHUNK_SAMPLES) if version == "1.5" else 1
    total, done = chunks * len(streams), 0

    def step():
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    rng = np.random.RandomState(seed)
    features = []
    with torch.no_grad():
        for wave in streams:
            if version == "1.5":
                features.append(whisper_features(model, wave, device, on_chunk=step))
            else:
                features.append(wav2vec2_features(model, wave, rng, device))
                step()
    features = torch.stack(features, 0)
    if not torch.isfinite(features).all():
        raise ValueError("the audio encoder returned NaN/inf features")
    windows = frame_windows(features, recipe.stride, video_frames)
    return AvatarAudioEmbeds(windows=windows.contiguous(), version=version, fps=float(recipe.fps), masks=masks)


def speaker_masks(speaker_1: torch.Tensor | None, speaker_2: torch.Tensor | None, others: torch.Tensor | None,
                  two_speakers: bool) -> torch.Tensor | None:
    """Speaker masks ``[K, H, W]`` in the official order (speaker 1, speaker 2, background =
    1 − (m1 ∪ m2), others...), or None for two speakers without masks (the sampler then draws the
    official default boxes on the reference image). Inputs are ComfyUI MASKs ``[B, H, W]`` or
    ``[H, W]``; a mismatch raises one line naming the node input."""
    given = {"speaker_1_mask": speaker_1, "speaker_2_mask": speaker_2, "others_mask": others}
    given = {name: (m[None] if m.ndim == 2 else m).float() for name, m in given.items() if m is not None}
    if not two_speakers:
        if given:
            raise ValueError(f"{next(iter(given))} is given but audio_2 is not: masks place two speakers")
        return None
    if not given:
        return None
    for name in ("speaker_1_mask", "speaker_2_mask"):
        if name not in given:
            raise ValueError(f"{name} is missing: give both speaker masks, or neither for the default "
                             f"left/right halves")
    size = tuple(given["speaker_1_mask"].shape[-2:])
    for name, m in given.items():
        if m.ndim != 3:
            raise ValueError(f"{name} must be a MASK [H, W] or [B, H, W], got {tuple(m.shape)}")
        if tuple(m.shape[-2:]) != size:
            raise ValueError(f"{name} is {m.shape[-1]}x{m.shape[-2]} but speaker_1_mask is {size[1]}x{size[0]}: "
                             f"draw all masks on the same reference image")
        if name != "others_mask" and m.shape[0] != 1:
            raise ValueError(f"{name} holds {m.shape[0]} masks; give one per speaker")
        for i, item in enumerate(m):
            if not bool((item > 0).any()):
                which = f"{name}[{i}]" if name == "others_mask" else name
                raise ValueError(f"{which} is empty: mark the person's region")
    first, second = given["speaker_1_mask"][0], given["speaker_2_mask"][0]
    background = ((first + second) <= 0).float()
    if not bool(background.any()):
        raise ValueError("speaker_1_mask and speaker_2_mask cover the whole image: leave some background")
    rows = [first, second, background]
    if "others_mask" in given:
        rows += list(given["others_mask"])
    return torch.stack(rows, 0)
