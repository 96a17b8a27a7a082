"""Official sigma lists (docs/pipelines.md, Schedules), checked against the published numbers."""

import numpy as np
import pytest
import torch
from longcat_pack.longcat import schedules as S


def _timesteps(sigmas):
    assert sigmas.dtype == torch.float32 and sigmas[-1] == 0
    return S.timesteps_of(sigmas)


def test_shift_formula_against_float32_numpy():
    sig = np.linspace(1, 0.001, 50, dtype=np.float32)
    expect = (12.0 * sig / (1 + 11.0 * sig)).astype(np.float32)  # diffusers' set_timesteps, float32
    assert torch.equal(S.shift_sigmas(torch.from_numpy(sig)), torch.from_numpy(expect))
    assert torch.equal(S.shift_sigmas(torch.tensor([0.0, 1.0]), 3.0), torch.tensor([0.0, 1.0]))


def test_normal_50():
    t = _timesteps(S.normal_sigmas(50))
    assert len(t) == 50
    head = [1000, 998.27, 996.47, 994.60, 992.66]
    tail = [668.22, 627.99, 579.30, 519.17, 443.02, 343.47, 207.77, 11.87]
    assert t[:5].tolist() == pytest.approx(head, abs=0.006)
    assert t[-8:].tolist() == pytest.approx(tail, abs=0.006)
    assert float(t[-1]) == pytest.approx(11.869, abs=5e-4)


def test_distill_16():
    base = S.distill_base_sigmas(16)
    expect = [1.00, .94, .88, .82, .76, .70, .64, .58, .50, .44, .38, .32, .26, .20, .14, .08]
    assert base.tolist() == pytest.approx(expect, abs=1e-7)
    t = _timesteps(S.distill_sigmas(16))
    published = [1000, 994.71, 988.76, 982.04, 974.36, 965.52, 955.22, 943.09, 923.08, 904.11,
                 880.31, 849.56, 808.29, 750.00, 661.42, 510.64]
    assert t.tolist() == pytest.approx(published, abs=0.006)
    assert float(t[-1]) == pytest.approx(510.638, abs=5e-4)


def test_distill_grid_picks_match_numpy_floor_linspace():
    for n in range(1, 51):
        picks = np.floor(np.linspace(0, 50, n, endpoint=False)).astype(np.int64)
        expect = (np.arange(50, 0, -1) * 20)[picks] / 1000
        assert S.distill_base_sigmas(n).tolist() == pytest.approx(expect.tolist(), abs=1e-7)


def test_kijai_12_step_distill_timesteps():
    # LongCat-Video issue #20: a 12-step distill schedule at shift 12.
    published = [1000, 992.8, 984.4, 974.4, 962.3, 947.4, 923.1, 896.8, 860.8, 808.3, 724.8, 571.4]
    assert _timesteps(S.distill_sigmas(12)).tolist() == pytest.approx(published, abs=0.06)


def test_enhance_hf_56_steps():
    sig = S.enhance_hf_sigmas(50)
    t = _timesteps(sig)
    assert len(t) == 56
    normal = _timesteps(S.normal_sigmas(50))
    assert torch.equal(t[:46], normal[normal > 500])
    assert t[46:].tolist() == [500, 450, 400, 350, 300, 250, 200, 150, 100, 50]
    assert torch.equal(sig[:-1], t / 1000)  # official: sigmas = timesteps / 1000


def test_refine_from_t_thresh():
    t = _timesteps(S.refine_sigmas(50, t_thresh=0.5))
    assert t.tolist() == pytest.approx([500, 443.02, 343.47, 207.77, 11.87], abs=0.006)
    t_hi = _timesteps(S.refine_sigmas(50, t_thresh=0.9))
    normal = _timesteps(S.normal_sigmas(50))
    assert t_hi[0] == 900 and torch.equal(t_hi[1:], normal[normal < 900]) and len(t_hi) == 22
    # Shift 1 (docs/pipelines.md, Schedules): 26 steps.
    assert len(_timesteps(S.refine_sigmas(50, 0.5, shift=1.0))) == 26


def test_shift_one_enhance_hf_35_steps():
    assert len(_timesteps(S.enhance_hf_sigmas(50, shift=1.0))) == 35


@pytest.mark.parametrize("call", [
    lambda: S.normal_sigmas(0), lambda: S.distill_sigmas(51), lambda: S.refine_sigmas(50, 0.0),
    lambda: S.normal_sigmas(50, shift=0.0), lambda: S.timesteps_of(torch.zeros(1)),
])
def test_bad_arguments(call):
    with pytest.raises(ValueError):
        call()
