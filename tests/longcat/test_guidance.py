"""CFG-Zero*, Euler step sign, x0 estimate and bf16 timestep rounding."""

import pytest
import torch
from longcat_pack.longcat.guidance import (
    cfg_zero_star,
    euler_step,
    predicted_x0,
    round_timestep_bf16,
)


def _official_b1(cond, uncond, g):
    """The official pipeline's arithmetic (valid for B = 1)."""
    pos, neg = cond.reshape(1, -1), uncond.reshape(1, -1)
    st = (torch.sum(pos * neg, dim=1, keepdim=True) / (torch.sum(neg ** 2, dim=1, keepdim=True) + 1e-8)).view(1, 1, 1, 1)
    return uncond * st + g * (cond - uncond * st)


def test_cfg_zero_star_b1_equals_official_bitwise():
    gen = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(2, 1, 4, 3, 2, 2, generator=gen)
    assert torch.equal(cfg_zero_star(cond, uncond, 4.0), _official_b1(cond, uncond, 4.0))


def test_cfg_zero_star_per_sample():
    gen = torch.Generator().manual_seed(1)
    cond, uncond = torch.randn(2, 3, 4, 2, 3, 3, generator=gen)
    out = cfg_zero_star(cond, uncond, 5.0)
    for b in range(3):
        torch.testing.assert_close(out[b:b + 1], _official_b1(cond[b:b + 1], uncond[b:b + 1], 5.0))
    # scale 1 returns cond exactly in exact arithmetic.
    torch.testing.assert_close(cfg_zero_star(cond, uncond, 1.0), cond)
    with pytest.raises(ValueError, match="same shape"):
        cfg_zero_star(cond, uncond[:1], 2.0)


def test_euler_step_negated_output_convention():
    gen = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(2, 1, 16, 2, 4, 4, generator=gen)
    sigma, sigma_next = torch.tensor([0.8, 0.3])
    x = (1 - sigma) * x0 + sigma * eps
    v = x0 - eps  # the DiT's official output sign
    x_next = euler_step(x, v, sigma, sigma_next)
    torch.testing.assert_close(x_next, (1 - sigma_next) * x0 + sigma_next * eps)
    # Bit-identical to the scheduler's x + (σ_next − σ)·(−v).
    assert torch.equal(x_next, x.float() + (sigma_next - sigma) * (-v))
    torch.testing.assert_close(predicted_x0(x, v, sigma), x0)
    assert x_next.dtype == torch.float32
    assert euler_step(x.bfloat16(), v, 0.8, 0.3).dtype == torch.float32


def test_round_timestep_bf16():
    t = torch.tensor([998.269, 996.47, 443.02, 11.869, 500.0, 0.0])
    assert round_timestep_bf16(t).tolist() == [1000.0, 996.0, 444.0, 11.875, 500.0, 0.0]
    assert torch.equal(round_timestep_bf16(round_timestep_bf16(t)), round_timestep_bf16(t))
