"""Sigma schedules of the official LongCat-Video pipelines (flow matching, static shift 12).

Pure functions: each returns a 1-D float32 CPU tensor of sigmas in [0, 1] with a terminal 0
appended, so ``len(sigmas) - 1`` DiT evaluations. The DiT timestep of step i is
``sigmas[i] * 1000`` (rounded to bf16 by ``guidance.round_timestep_bf16``).

float32 on purpose: the official scheduler (a copy of diffusers' ``FlowMatchEulerDiscreteScheduler``)
builds its sigmas and timesteps in float32 in exactly the operation order used here, so these
lists equal the official ones bit for bit (pinned by ``tests/longcat/test_schedules.py``).
CPU on purpose: sigmas are read as Python numbers every step; keeping them off the GPU avoids
a device sync per step. Imports only torch.
"""

import math

import torch

SHIFT = 12.0
NUM_TRAIN_TIMESTEPS = 1000
# Distill grid: the 1000 training timesteps sampled every 20 (50 distillation steps).
DISTILL_GRID_STEPS = 50
# enhance_hf: steps above this timestep come from the 50-step schedule, then a uniform tail.
ENHANCE_HF_SPLIT = 500.0
ENHANCE_HF_TAIL_STEPS = 10


def _check_steps(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {n!r}")


def _check_shift(shift: float) -> None:
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift!r}")


def _with_terminal_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas.to(torch.float32), torch.zeros(1, dtype=torch.float32)])


def shift_sigmas(sigmas: torch.Tensor, shift: float = SHIFT) -> torch.Tensor:
    """Static flow shift ``k·σ / (1 + (k−1)·σ)`` elementwise, in float32.

    sigmas: any float tensor (no terminal zero expected, but 0 maps to 0). Returns float32.
    """
    _check_shift(shift)
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32)
    # Same operation order as diffusers' set_timesteps, so float32 rounding matches.
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def base_sigmas(num_steps: int) -> torch.Tensor:
    """Unshifted official 'normal' sigmas: ``linspace(1, 0.001, n)`` in float32, ``[n]``."""
    _check_steps(num_steps)
    return torch.linspace(1, 0.001, num_steps, dtype=torch.float32)


def distill_base_sigmas(num_steps: int) -> torch.Tensor:
    """Unshifted distill sigmas, ``[n]``: grid 1000, 980, …, 20 picked at floor(linspace(0, 50, n)).

    n = 16 gives 1.00, .94, .88, .82, .76, .70, .64, .58, .50, .44, .38, .32, .26, .20, .14, .08.
    """
    _check_steps(num_steps)
    if num_steps > DISTILL_GRID_STEPS:
        raise ValueError(f"num_steps must be <= {DISTILL_GRID_STEPS} for the distill grid, got {num_steps}")
    stride = NUM_TRAIN_TIMESTEPS // DISTILL_GRID_STEPS
    grid = torch.arange(DISTILL_GRID_STEPS, 0, -1, dtype=torch.int64) * stride  # 1000 … 20
    # floor(linspace(0, 50, n, endpoint=False)) computed exactly in integers: floor(50·i/n).
    picks = torch.tensor([DISTILL_GRID_STEPS * i // num_steps for i in range(num_steps)])
    return grid[picks].to(torch.float32) / NUM_TRAIN_TIMESTEPS


def normal_sigmas(num_steps: int = 50, shift: float = SHIFT) -> torch.Tensor:
    """Official non-distilled schedule: shifted ``linspace(1, 0.001, n)`` + terminal 0, ``[n+1]``.

    n = 50, shift 12: timesteps 1000, 998.27, …, 207.77, 11.87.
    """
    return _with_terminal_zero(shift_sigmas(base_sigmas(num_steps), shift))


def distill_sigmas(num_steps: int = 16, shift: float = SHIFT) -> torch.Tensor:
    """Official distilled (cfg_step_lora) schedule + terminal 0, ``[n+1]``.

    n = 16, shift 12: timesteps 1000, 994.71, …, 661.42, 510.64, then straight to 0.
    """
    return _with_terminal_zero(shift_sigmas(distill_base_sigmas(num_steps), shift))


def _timesteps_to_sigmas(timesteps: torch.Tensor) -> torch.Tensor:
    # The official pipelines rebuild sigmas as timesteps / 1000 for the truncated lists, which
    # can differ by one float32 ulp from the shifted sigma; reproduce that.
    return _with_terminal_zero(timesteps.to(torch.float32) / NUM_TRAIN_TIMESTEPS)


def enhance_hf_sigmas(num_steps: int = 50, shift: float = SHIFT) -> torch.Tensor:
    """Video-continuation ``enhance_hf`` schedule + terminal 0.

    The n-step normal timesteps above 500, then ``500, 450, …, 50`` (10 uniform steps).
    n = 50, shift 12: 46 + 10 = 56 steps, ``[57]``. Not for the distilled model (the official
    pipeline rejects ``use_distill`` with ``enhance_hf``).
    """
    timesteps = normal_sigmas(num_steps, shift)[:-1] * NUM_TRAIN_TIMESTEPS
    head = timesteps[timesteps > ENHANCE_HF_SPLIT]
    step = ENHANCE_HF_SPLIT / ENHANCE_HF_TAIL_STEPS
    tail = torch.tensor([ENHANCE_HF_SPLIT - i * step for i in range(ENHANCE_HF_TAIL_STEPS)],
                        dtype=torch.float32)
    return _timesteps_to_sigmas(torch.cat([head, tail]))


def refine_sigmas(num_steps: int = 50, t_thresh: float = 0.5, shift: float = SHIFT) -> torch.Tensor:
    """Refinement schedule starting at ``t_thresh`` + terminal 0.

    ``[t_thresh·1000] + [n-step normal timesteps < t_thresh·1000]``. n = 50, t_thresh 0.5,
    shift 12: timesteps 500, 443.02, 343.47, 207.77, 11.87 (5 DiT evaluations), ``[6]``.
    """
    if not 0.0 < t_thresh <= 1.0 or math.isnan(t_thresh):
        raise ValueError(f"t_thresh must be in (0, 1], got {t_thresh!r}")
    timesteps = normal_sigmas(num_steps, shift)[:-1] * NUM_TRAIN_TIMESTEPS
    start = torch.tensor(t_thresh * NUM_TRAIN_TIMESTEPS, dtype=torch.float32)
    return _timesteps_to_sigmas(torch.cat([start.reshape(1), timesteps[timesteps < start]]))


def timesteps_of(sigmas: torch.Tensor) -> torch.Tensor:
    """DiT timesteps (0..1000 scale, not yet bf16-rounded) of a sigma list with terminal 0, ``[n]``."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32)
    if sigmas.dim() != 1 or sigmas.numel() < 2:
        raise ValueError(f"sigmas must be 1-D with a terminal 0, got shape {tuple(sigmas.shape)}")
    return sigmas[:-1] * NUM_TRAIN_TIMESTEPS
