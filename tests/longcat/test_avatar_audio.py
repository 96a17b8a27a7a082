"""Avatar audio recipe steps (longcat/avatar/audio.py) against numbers derived independently:
the BS.1770 reference tone, filter responses, the official padding/windowing arithmetic, and
stub encoders whose outputs encode time and layer, so chunking, grouping and resampling can be
read back exactly."""

import math

import numpy as np
import pytest
import torch
from longcat_pack.longcat.avatar import audio as A

RATE = A.SAMPLE_RATE


def _sine(freq, seconds, amplitude=1.0):
    t = torch.arange(int(seconds * RATE), dtype=torch.float64) / RATE
    return amplitude * torch.sin(2 * math.pi * freq * t)


def _response(b, a, freq):
    z = np.exp(-1j * 2 * np.pi * freq / RATE * np.arange(max(len(a), len(b))))
    return abs(np.dot(b, z[: len(b)]) / np.dot(a, z[: len(a)]))


def test_butterworth_lowpass_response():
    """3rd-order Butterworth at 3 kHz: unity at DC, −3 dB at the cutoff, a zero at Nyquist, and
    the Butterworth magnitude 1/sqrt(1 + (tan(πf/fs)/tan(πfc/fs))^6) everywhere (bilinear map)."""
    b, a = A.butterworth_lowpass(3, 3000.0, RATE)
    assert _response(b, a, 0.0) == pytest.approx(1.0, abs=1e-12)
    assert _response(b, a, 3000.0) == pytest.approx(1 / math.sqrt(2), abs=1e-12)
    assert _response(b, a, RATE / 2) == pytest.approx(0.0, abs=1e-12)
    for f in (500.0, 2000.0, 4000.0, 6500.0):
        ratio = math.tan(math.pi * f / RATE) / math.tan(math.pi * 3000.0 / RATE)
        assert _response(b, a, f) == pytest.approx(1 / math.sqrt(1 + ratio ** 6), abs=1e-12)


def test_iir_filter_equals_the_difference_equation():
    b, a = A.biquad("high_pass", 0.0, 0.5, 38.0, RATE)
    x = torch.from_numpy(np.random.RandomState(0).randn(3000))
    y = np.zeros(3000)
    for n in range(3000):  # a0·y[n] = Σ b_k x[n−k] − Σ a_k y[n−k], a0 = 1
        y[n] = sum(b[k] * x[n - k].item() for k in range(3) if n >= k) - sum(a[k] * y[n - k] for k in (1, 2) if n >= k)
    assert torch.allclose(A.iir_filter(b, a, x), torch.from_numpy(y), atol=1e-12, rtol=0)


def test_k_weighting_biquads():
    """High shelf: 0 dB at DC, +4 dB at Nyquist; high-pass: 0 at DC, 1 at Nyquist, −6 dB (Q 0.5)
    at 38 Hz."""
    shelf = A.biquad("high_shelf", 4.0, 1 / math.sqrt(2), 1500.0, RATE)
    high_pass = A.biquad("high_pass", 0.0, 0.5, 38.0, RATE)
    assert _response(*shelf, 0.0) == pytest.approx(1.0, abs=1e-12)
    assert _response(*shelf, RATE / 2) == pytest.approx(10 ** (4 / 20), abs=1e-12)
    assert _response(*high_pass, 0.0) == pytest.approx(0.0, abs=1e-12)
    assert _response(*high_pass, RATE / 2) == pytest.approx(1.0, abs=1e-12)
    assert _response(*high_pass, 38.0) == pytest.approx(0.5, abs=1e-9)


@pytest.mark.parametrize("amplitude_db", [0.0, -20.0])
def test_loudness_of_a_steady_tone(amplitude_db):
    """A steady sine reads −0.691 + 10·log10(A²/2·|K(f)|²); BS.1770-4's 997 Hz 0 dBFS reference
    tone is −3.01 LKFS (the cookbook K-filter at 16 kHz is within 0.1 dB of the spec's)."""
    amplitude = 10 ** (amplitude_db / 20)
    tone = _sine(997.0, 5.0, amplitude)
    gain = (_response(*A.biquad("high_shelf", 4.0, 1 / math.sqrt(2), 1500.0, RATE), 997.0)
            * _response(*A.biquad("high_pass", 0.0, 0.5, 38.0, RATE), 997.0))
    expected = -0.691 + 10 * math.log10(amplitude ** 2 / 2 * gain ** 2)
    assert A.integrated_loudness(tone) == pytest.approx(expected, abs=2e-3)  # filter start-up transient
    assert A.integrated_loudness(tone) == pytest.approx(-3.01 + amplitude_db, abs=0.1)


def test_loudness_gates_silence_and_quiet_blocks():
    loud = _sine(997.0, 4.0, 0.1)
    assert A.integrated_loudness(torch.zeros(RATE * 4, dtype=torch.float64)) == float("-inf")
    # Then 4 s of silence (below −70 LUFS) and 4 s of a tone 30 dB quieter (below the relative gate
    # of −10 LU): only the 37 loud blocks and the 3 blocks leaving the tone (75, 50, 25 % of its
    # energy, all within 10 LU) pass both gates.
    padded = torch.cat([loud, torch.zeros(RATE * 4, dtype=torch.float64), _sine(997.0, 4.0, 0.1 / 31.6)])
    expected = A.integrated_loudness(loud) + 10 * math.log10((37 + 0.75 + 0.5 + 0.25) / 40)
    assert A.integrated_loudness(padded) == pytest.approx(expected, abs=1e-3)


def test_normalize_loudness_reaches_minus_23_and_leaves_silence():
    speech = torch.from_numpy(np.random.RandomState(1).randn(RATE * 5) * 0.05)
    assert A.integrated_loudness(A.normalize_loudness(speech)) == pytest.approx(-23.0, abs=1e-9)
    silence = torch.zeros(RATE * 5, dtype=torch.float64)
    assert torch.equal(A.normalize_loudness(silence), silence)
    with pytest.raises(ValueError, match="400 ms"):
        A.integrated_loudness(torch.ones(100, dtype=torch.float64))


def test_zero_mean_unit_var_uses_the_population_variance():
    x = torch.tensor([1.0, 2.0, 3.0, 6.0], dtype=torch.float64)
    expected = (x - 3.0) / math.sqrt(3.5 + 1e-7)  # population variance of x is 3.5
    assert torch.allclose(A.zero_mean_unit_var(x), expected.float(), atol=1e-6)


def test_noise_floor_is_numpys_seeded_randn_at_minus_45_db():
    noise = A.noise_floor(1000, np.random.RandomState(5))
    assert torch.equal(noise, torch.from_numpy(np.random.RandomState(5).randn(1000) * 10 ** (-45 / 20)))


def test_generation_length_and_padding():
    """Official padding: D = 93/fps + k·80/fps seconds; ceil((D − len/sr)·sr) zeros."""
    assert A.generation_seconds(93, 25) == 93 / 25
    assert A.generation_seconds(93 + 80 * 2, 16) == 93 / 16 + 2 * 80 / 16
    wave = torch.ones(RATE, dtype=torch.float64)
    padded = A.pad_to_seconds(wave, 93 / 25)
    assert padded.shape[0] == math.ceil((93 / 25 - 1.0) * RATE) + RATE and padded[RATE:].abs().sum() == 0
    longer = torch.ones(RATE * 10, dtype=torch.float64)
    assert torch.equal(A.pad_to_seconds(longer, 93 / 25), longer)  # longer audio: kept whole
    assert A.frames_for_audio(RATE * 3, 25) == 93
    assert A.frames_for_audio(int(RATE * 3.8), 25) == 173  # 95 frames needed → one extension
    assert A.frames_for_audio(RATE * 12, 16) == 93 + 80 * 2


def test_frame_windows_centre_stride_and_clamp():
    feats = torch.arange(10.0)[None, :, None, None]  # one stream, feature t has value t
    w = A.frame_windows(feats, stride=2, video_frames=6)[0, :, :, 0, 0]
    assert w[0].tolist() == [0, 0, 0, 1, 2]  # the left edge repeats the first feature
    assert w[2].tolist() == [2, 3, 4, 5, 6]
    assert w[5].tolist() == [8, 9, 9, 9, 9]  # the right edge repeats the last
    full = A.frame_windows(feats, stride=1, video_frames=8)
    assert torch.equal(A.frame_windows(feats, stride=1, video_frames=3, start=5), full[:, 5:8])


def test_speaker_tracks_para_and_add():
    one, two = torch.ones(3, dtype=torch.float64), 2 * torch.ones(5, dtype=torch.float64)
    a, b = A.speaker_tracks(one, two, "para")
    assert a.tolist() == [1, 1, 1, 0, 0] and b.tolist() == [2] * 5
    a, b = A.speaker_tracks(one, two, "add")
    assert a.tolist() == [1, 1, 1] + [0] * 5 and b.tolist() == [0] * 3 + [2] * 5
    with pytest.raises(ValueError, match="multi_audio_type"):
        A.speaker_tracks(one, two, "mix")


def _mask(h=8, w=12, box=(0, 4, 0, 4)):
    m = torch.zeros(1, h, w)
    m[:, box[0]:box[1], box[2]:box[3]] = 1
    return m


def test_speaker_masks_order_and_background():
    m1, m2 = _mask(box=(1, 7, 0, 5)), _mask(box=(1, 7, 6, 12))
    others = torch.cat([_mask(box=(0, 1, 0, 2)), _mask(box=(7, 8, 9, 12))])
    masks = A.speaker_masks(m1, m2, others, two_speakers=True)
    assert masks.shape == (5, 8, 12)
    assert torch.equal(masks[0], m1[0]) and torch.equal(masks[1], m2[0])
    assert torch.equal(masks[2], 1 - (m1[0] + m2[0]).clamp(max=1))
    assert torch.equal(masks[3:], others)
    assert A.speaker_masks(None, None, None, two_speakers=True) is None  # default halves
    assert A.speaker_masks(None, None, None, two_speakers=False) is None


@pytest.mark.parametrize("args, two, name", [
    ((_mask(), None, None), False, "speaker_1_mask is given but audio_2"),
    ((_mask(), None, None), True, "speaker_2_mask is missing"),
    ((_mask(), _mask(h=9), None), True, "speaker_2_mask is 12x9 but speaker_1_mask is 12x8"),
    ((_mask(), torch.zeros(1, 8, 12), None), True, "speaker_2_mask is empty"),
    ((_mask(), _mask(box=(4, 8, 4, 8)), torch.cat([_mask(), torch.zeros(1, 8, 12)])), True, r"others_mask\[1\] is empty"),
    ((torch.cat([_mask(), _mask()]), _mask(box=(4, 8, 4, 8)), None), True, "speaker_1_mask holds 2 masks"),
    ((None, None, _mask()), True, "speaker_1_mask is missing"),
    ((torch.ones(1, 8, 12), _mask(), None), True, "cover the whole image"),
])
def test_speaker_mask_errors_name_the_input(args, two, name):
    with pytest.raises(ValueError, match=name):
        A.speaker_masks(*args, two_speakers=two)


class _StubWhisper:
    """Mel = the chunk padded to 30 s; the encoder's 33 states are ``(layer + 1)·(1500·call + t)``,
    so each output tells which chunk, time step and layer group it came from."""

    def __init__(self):
        self.encoder = self
        self.embed_positions = None
        self.calls = 0

    def feature_extractor(self, chunk):
        assert chunk.shape[:2] == (1, 1) and chunk.shape[2] <= A.WHISPER_CHUNK_SAMPLES
        return torch.zeros(1, 4, 3000)

    def __call__(self, mel):
        t = 1500 * self.calls + torch.arange(1500.0)
        self.calls += 1
        states = tuple(((layer + 1) * t)[None, :, None].expand(1, 1500, 2) for layer in range(33))
        return states[-1], states


def test_whisper_chunks_groups_and_25hz_alignment():
    seconds = 31.0  # two 30 s chunks
    model = _StubWhisper()
    wave = torch.from_numpy(np.random.RandomState(2).randn(int(seconds * RATE)) * 0.05)
    feats = A.whisper_features(model, wave)
    frames = int(seconds * 25)
    assert model.calls == 2 and feats.shape == (frames, 5, 2)
    # group means of (layer+1): layers 0-7 → 4.5, 8-15 → 12.5, 16-23 → 20.5, 24-31 → 28.5, 32 → 33;
    # frame i samples 50 Hz step i·(2L − 1)/(L − 1) (corners aligned).
    position = torch.arange(frames, dtype=torch.float64) * (2 * frames - 1) / (frames - 1)
    for g, scale in enumerate([4.5, 12.5, 20.5, 28.5, 33.0]):
        assert torch.allclose(feats[:, g, 0].double(), scale * position, rtol=1e-5, atol=1e-3)


def test_whisper_rejects_a_non_large_v3_encoder():
    model = _StubWhisper()
    model.__call__ = None

    class Short(_StubWhisper):
        def __call__(self, mel):
            out, states = super().__call__(mel)
            return out, states[:13]

    with pytest.raises(ValueError, match="whisper-large-v3"):
        A.whisper_features(Short(), torch.zeros(RATE * 4, dtype=torch.float64))


class _StubWav2Vec2:
    """CNN output: the 50 Hz frame index; projection: identity; layers: ×2 and ×3."""

    def __init__(self):
        self.seen = None

    def feature_extractor(self, x):
        self.seen = x
        return torch.arange(x.shape[1] // 320, dtype=torch.float32)[None, :, None].expand(1, -1, 3)

    def feature_projection(self, h):
        return h

    def encoder(self, h):
        return h, (h, 2 * h, 3 * h)


def test_wav2vec2_interpolates_to_32hz_before_the_transformer():
    model = _StubWav2Vec2()
    wave = torch.from_numpy(np.random.RandomState(3).randn(int(2.5 * RATE)) * 0.05)
    feats = A.wav2vec2_features(model, wave, np.random.RandomState(0))
    frames, cnn = int(2.5 * 32), int(2.5 * RATE) // 320
    assert feats.shape == (frames, 2, 3)
    position = torch.arange(frames, dtype=torch.float64) * (cnn - 1) / (frames - 1)
    assert torch.allclose(feats[:, 0, 0].double(), 2 * position, atol=1e-4)
    assert torch.allclose(feats[:, 1, 0].double(), 3 * position, atol=1e-4)
    x = model.seen[0].double()  # the transformer saw a z-normalized waveform
    assert abs(x.mean().item()) < 1e-6 and x.std(correction=0).item() == pytest.approx(1.0, abs=1e-3)  # the +1e-7


def test_encode_streams_windows_progress_and_silent_stream():
    wave = torch.from_numpy(np.random.RandomState(4).randn(int(31 * RATE)) * 0.05)
    steps = []
    embeds = A.encode_streams(_StubWhisper(), [wave, wave[:RATE], torch.zeros_like(wave)], video_frames=0,
                              masks=torch.ones(4, 2, 2), progress=lambda d, t: steps.append((d, t)))
    assert steps == [(i, 6) for i in range(1, 7)]  # 3 streams × 2 chunks
    assert embeds.version == "1.5" and embeds.fps == 25.0
    # 31 s at 25 fps = 775 frames → 93 + 80·9 = 813 output frames; the audio is padded to 32.52 s.
    assert embeds.windows.shape == (3, 813, 5, 5, 2)
    with pytest.raises(ValueError, match="cover 813 video frames"):
        embeds.segment(800, 93)


def test_default_speaker_masks_are_the_official_boxes():
    """No masks: speaker 1 in the left half, speaker 2 in the right, 10 % margins in each half."""
    from longcat_pack.longcat.avatar.embeds import default_speaker_masks

    m = default_speaker_masks(100, 201)  # half = 100
    assert m.shape == (3, 100, 201)
    ys, xs = torch.nonzero(m[0], as_tuple=True)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (10, 89, 10, 89)
    ys, xs = torch.nonzero(m[1], as_tuple=True)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (10, 89, 110, 189)
    assert torch.equal(m[2], 1 - m[0] - m[1])
