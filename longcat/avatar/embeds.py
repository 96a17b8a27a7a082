"""The audio features one Avatar generation consumes (ComfyUI type ``LONGCAT_AUDIO_EMBEDS``).

Made by the audio-embeds node, read by the Avatar sampler and extension nodes. Imports nothing
from ComfyUI.
"""

from dataclasses import dataclass

import torch

AUDIO_WINDOW = 5  # audio frames per video frame: the centre ± 2
VERSIONS = {"1.0": (12, 768, 16), "1.5": (5, 1280, 25)}  # version → (layers L, channels C, video fps) of the
# published encoders; tiny test encoders give other L × C, which the sampler checks against its DiT


@dataclass(frozen=True)
class AvatarAudioEmbeds:
    """Per-stream audio windows for every video frame of the whole output.

    windows: fp32 ``[N_streams, F_total, 5, L, C]``; video frame f's window is the features at
    ``stride·f + (−2..2)`` clamped to the feature range (stride 2 for 1.0 at 32 Hz, 1 for 1.5 at
    25 Hz), so segment k of a long video is ``windows[:, 80k : 80k + 93]``. N_streams is 1
    (single speaker), 2 (two speakers) or 3 (two speakers + the silent background stream of 1.5).
    version: "1.0" or "1.5". fps: the video frame rate the windows are built for (16 or 25).
    masks: None for one stream, or for two streams without masks (the official default boxes,
    ``default_speaker_masks`` on the reference image); else fp32 ``[K, H, W]`` in [0, 1] on the
    reference image's pixel grid, rows ``[speaker 1, speaker 2, background, others...]`` (K = 3
    for 2 streams, K ≥ 4 for 3).
    """

    windows: torch.Tensor
    version: str
    fps: float
    masks: torch.Tensor | None = None

    def __post_init__(self):
        if self.version not in VERSIONS:
            raise ValueError(f"audio embeds version must be one of {sorted(VERSIONS)}, got {self.version!r}")
        layers, channels, _ = VERSIONS[self.version]
        w = self.windows
        if w.ndim != 5 or w.shape[2] != AUDIO_WINDOW:
            raise ValueError(f"audio windows must be [N, F, {AUDIO_WINDOW}, L, C] ({layers} x {channels} for Avatar "
                             f"{self.version}), got {tuple(w.shape)}")
        if not 1 <= w.shape[0] <= 3:
            raise ValueError(f"audio embeds hold 1 to 3 streams, got {w.shape[0]}")
        if (w.shape[0] == 1 and self.masks is not None) or (w.shape[0] == 3 and self.masks is None):
            raise ValueError("speaker masks go with 2 audio streams (optional) or 3 (required), never with 1")
        if self.masks is not None:
            k = self.masks.shape[0]
            if self.masks.ndim != 3 or (w.shape[0] == 2 and k != 3) or (w.shape[0] == 3 and k < 4):
                raise ValueError(f"speaker masks must be [K, H, W] with K = 3 for 2 streams and K >= 4 for 3 "
                                 f"(speaker 1, speaker 2, background, others), got {tuple(self.masks.shape)} "
                                 f"for {w.shape[0]} streams")

    @property
    def num_frames(self) -> int:
        return self.windows.shape[1]

    def segment(self, start: int, frames: int) -> torch.Tensor:
        """Windows of video frames ``[start, start + frames)`` → ``[N, frames, 5, L, C]``."""
        if start < 0 or start + frames > self.num_frames:
            raise ValueError(f"audio embeds cover {self.num_frames} video frames, but frames {start}..{start + frames - 1} "
                             f"are needed: set the audio embeds node's frame count to at least {start + frames}")
        return self.windows[:, start:start + frames]


def default_speaker_masks(height: int, width: int) -> torch.Tensor:
    """The official two-speaker default on a ``height`` x ``width`` reference image → ``[3, H, W]``:
    speaker 1 in the left half and speaker 2 in the right half, 10 % margins in each half, then
    background = 1 − (m1 ∪ m2)."""
    half = width // 2
    top, bottom = int(height * 0.1), int(height * 0.9)
    masks = torch.zeros(3, height, width)
    masks[0, top:bottom, int(half * 0.1):int(half * 0.9)] = 1
    masks[1, top:bottom, int(half * 0.1 + half):int(half * 0.9 + half)] = 1
    masks[2] = (masks[0] + masks[1] <= 0).float()
    return masks
