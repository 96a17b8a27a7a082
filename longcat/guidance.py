"""LongCat-Video sampling conventions: CFG-Zero* guidance, the Euler step, timestep rounding.

The official pipeline hands the scheduler the *negated* DiT output, so with the DiT's
``v ≈ x0 − ε`` (for ``x_σ = (1−σ)·x0 + σ·ε``) one Euler step is ``x + (σ − σ_next)·v`` and the
clean estimate is ``x + σ·v``. These functions are the only place that convention lives.
Imports only torch.
"""

import torch

# CFG-Zero* denominator guard (official value).
CFG_ZERO_EPS = 1e-8


def cfg_zero_star(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """CFG-Zero* "optimized scale" guidance, per sample.

    cond, uncond: ``[B, ...]`` DiT outputs for the positive and negative prompt (fp32).
    Per sample b: ``s*_b = <c_b, u_b> / (‖u_b‖² + 1e-8)`` over the flattened prediction, then
    ``u·s* + scale·(c − u·s*)``. Returns fp32, shape of ``cond``.

    Deviation: the official pipeline views ``s*`` as ``[B, 1, 1, 1]`` against a 5-D tensor,
    which is only right for B = 1 (docs/pipelines.md, Pipelines); this is the per-sample formula it intends
    (same numbers at B = 1, pinned by ``test_guidance.py``).
    """
    if cond.shape != uncond.shape:
        raise ValueError(f"cond and uncond must have the same shape, got {tuple(cond.shape)} and {tuple(uncond.shape)}")
    cond, uncond = cond.float(), uncond.float()
    batch = cond.shape[0]
    c_flat, u_flat = cond.reshape(batch, -1), uncond.reshape(batch, -1)
    dot = torch.sum(c_flat * u_flat, dim=1, keepdim=True)
    norm = torch.sum(u_flat ** 2, dim=1, keepdim=True) + CFG_ZERO_EPS
    s_star = (dot / norm).view(batch, *([1] * (cond.dim() - 1)))
    # Same operation order as the official pipeline, so B = 1 matches bit for bit.
    return uncond * s_star + scale * (cond - uncond * s_star)


def euler_step(x: torch.Tensor, v: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """One flow Euler step with the official sign: ``x_next = x + (σ − σ_next)·v``, fp32.

    x: latent, any shape; v: DiT output (official sign, ``≈ x0 − ε``), same shape.
    sigma, sigma_next: Python floats or 0-d tensors. Returns fp32.

    The official scheduler computes ``x.float() + (σ_next − σ)·(−v)`` with float32 sigmas;
    negation is exact in IEEE arithmetic, so this form is bit-identical. Sigmas are taken to
    float32 first for the same reason.
    """
    if x.shape != v.shape:
        raise ValueError(f"x and v must have the same shape, got {tuple(x.shape)} and {tuple(v.shape)}")
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    sigma_next = torch.as_tensor(sigma_next, dtype=torch.float32)
    dt = (sigma - sigma_next).to(x.device)
    return x.float() + dt * v.float()


def predicted_x0(x: torch.Tensor, v: torch.Tensor, sigma) -> torch.Tensor:
    """Clean-latent estimate ``x + σ·v`` (fp32), e.g. for previews."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32).to(x.device)
    return x.float() + sigma * v.float()


def round_timestep_bf16(timestep: torch.Tensor) -> torch.Tensor:
    """Round 0..1000-scale timesteps to bf16 and return them as fp32.

    The official DiT embeds ``timestep.to(bf16)`` (weights are bf16), e.g. 998.27 → 1000 and
    443.02 → 444; an fp32 port must round explicitly to embed the same values. Idempotent.
    """
    return torch.as_tensor(timestep).to(torch.bfloat16).to(torch.float32)
