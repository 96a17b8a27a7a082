"""Our Avatar DiT against outputs of the official Avatar DiT (fp32, CPU, tiny random model).

How ``tests/data/avatar_official.safetensors`` was made: the official LongCat-Video code (commit
6b3f4b8) was copied outside the repository and imported on CPU with its attention calls served
by plain softmax attention (a stand-in ``flash_attn``), its CUDA-only helpers stubbed and
torch.compile disabled. ``LongCatVideoAvatarTransformer3DModel`` was built with the tiny config
of ``tiny_avatar.TINY_AVATAR`` (plus ``cp_split_hw=[1, 1]``, ``text_tokens_zero_pad=True``),
``load_state_dict`` got ``tiny_avatar(seed=0)``'s weights, and each of ``avatar_cases()`` was run
through it (the cached cases: its cache pass ``return_kv=True, skip_crs_attn=True`` on
``[ref | cond]``, then the noise frames with that cache). Its outputs were saved as they came,
with a checksum of the seeded weights. Our outputs agreed to ≤ 1e-6 on all 26 cases (both
``audio_prenorm`` settings).

``loop_*``: two sampling steps of a continuation segment (``tiny_avatar.loop_cases``: one and
two speakers, text + audio CFG or DMD's single pass, cached and uncached), run by the official
``generate_avc`` denoising loop (pipeline_longcat_video_avatar.py lines 1366-1497, transcribed
line by line over the official DiT, with the scheduler's Euler step written out) and by our
``avatar_denoise`` + overlap write; they agreed to ≤ 3.4e-6. The file keeps 18 tensors (~137 KB).
No official code is needed to run these tests.
"""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_avatar import (
    avatar_cases,
    loop_cases,
    run_our_loop,
    run_ours,
    tiny_avatar,
    weight_checksum,
)

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "avatar_official.safetensors"
REFERENCE = load_file(str(FIXTURE))
CASES = avatar_cases()
ATOL = 1e-5  # fp32; the official outputs agree to ≤ 1e-6


def _model(prenorm):
    model = tiny_avatar(seed=0, audio_prenorm=prenorm)
    tag = "prenorm" if prenorm else "noprenorm"
    want = float(REFERENCE[f"checksum.{tag}"])
    if abs(weight_checksum(model) - want) > 1e-6 * want:
        pytest.fail("this torch draws different seeded weights than the one that made the fixture; "
                    "regenerate tests/data/avatar_official.safetensors")
    return model


@pytest.mark.parametrize("key", sorted(k for k in REFERENCE if not k.startswith(("checksum", "projector", "loop_"))))
def test_dit_matches_official(key):
    name, tag = key.rsplit(".", 1)
    model = _model(tag == "prenorm")
    with torch.no_grad():
        ours = run_ours(model, CASES[name])
    torch.testing.assert_close(ours, REFERENCE[key], atol=ATOL, rtol=0)


def test_projector_matches_official():
    model = _model(True)
    windows = torch.randn(2, 13, 5, 3, 8, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        tokens = model.audio_proj(windows)
    assert tokens.shape == (2, 4, 4, 16)  # 13 video frames → 4 latent frames of 4 tokens × 16
    torch.testing.assert_close(tokens, REFERENCE["projector.prenorm"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("key", sorted(k for k in REFERENCE if k.startswith("loop_")))
def test_continuation_sampling_matches_the_official_loop(key):
    name = key[len("loop_"):].rsplit(".", 1)[0]
    with torch.no_grad():
        ours = run_our_loop(_model(True), loop_cases()[name])
    torch.testing.assert_close(ours, REFERENCE[key], atol=2e-5, rtol=0)
