"""The LongCat Long Video node's widgets as one checked object (``LongVideoSettings``): sizes,
latent shapes and the step count of the whole run.

Imports no ComfyUI (the CPU tests cover it without a ComfyUI tree).
"""

from dataclasses import dataclass

import torch

from ..longcat.frames import REFINE_MULTIPLE, check_size, latent_frames, latent_shape, refine_plan
from ..longcat.long_video import refine_windows

@dataclass(frozen=True)
class LongVideoSettings:
    """The LongCat Long Video node's widgets; sigmas None = the official 50-step schedules."""

    num_segments: int
    width: int
    height: int
    num_frames: int
    num_cond_frames: int
    guidance_scale: float
    seed: int
    use_kv_cache: bool
    t_thresh: float
    refine_width: int
    refine_height: int
    t2v_sigmas: torch.Tensor | None = None
    vc_sigmas: torch.Tensor | None = None

    def __post_init__(self):
        # Checked here so a bad value fails before stage 1 runs, not minutes into it.
        if not 1 <= self.num_cond_frames < self.num_frames:
            raise ValueError(f"num_cond_frames must be in [1, num_frames={self.num_frames}), "
                             f"got {self.num_cond_frames}")
        check_size(self.height, self.width)
        check_size(self.refine_height, self.refine_width, REFINE_MULTIPLE)

    @property
    def stage1_frames(self) -> int:
        """Frames of the whole stage-1 video: the first clip plus each segment's new frames."""
        return self.num_frames + self.num_segments * (self.num_frames - self.num_cond_frames)

    def stage1_latent_shape(self) -> tuple[int, ...]:
        """Latent ``[1, 16, T, h, w]`` of one stage-1 clip (one DiT forward without CFG)."""
        return latent_shape(latent_frames(self.num_frames), self.height, self.width)

    def refine_latent_shape(self) -> tuple[int, ...]:
        """Largest latent ``[1, 16, T, h, w]`` of a refinement window, at the refine size.

        The first window has no conditioning, later ones hold the previous window's last
        ``2·num_cond_frames`` refined frames; both are padded as ``refine_plan`` says.
        """
        latents = max(refine_plan(self.num_frames, held).latent_frames
                      for held in (0, 2 * self.num_cond_frames))
        return latent_shape(latents, self.refine_height, self.refine_width)

    def total_steps(self, t2v_steps: int, vc_steps: int, refine_steps: int | None) -> int:
        """DiT loop steps of the whole run (one progress bar over all of them)."""
        steps = t2v_steps + self.num_segments * vc_steps
        if refine_steps is not None:
            windows = refine_windows(self.stage1_frames, self.num_frames, self.num_cond_frames)
            steps += len(windows) * refine_steps
        return steps
