"""LongCat Image to Video and LongCat Continue Video: LATENTs with clean conditioning frames."""

import logging

from comfy_api.latest import io

from ..longcat.frames import STAGE1_FPS, check_size, fps_stride, latent_frames, round_frames
from ..longcat.pipelines import fit_frames
from .sampling_inputs import cond_latent_dict

logger = logging.getLogger(__name__)

_SIZE = {"min": 16, "max": 4096, "step": 16}


def encode_cond_latent(vae, frames, width: int, height: int, length: int) -> dict:
    """Resize ``frames`` ``[F, H, W, 3]``, VAE-encode them (raw latents) in front of empty frames."""
    check_size(height, width)
    total = latent_frames(round_frames(length))
    cond_raw = vae.encode(fit_frames(frames[..., :3], height, width))
    return cond_latent_dict(cond_raw, total)


def _size_inputs():
    return [
        io.Int.Input("width", default=832, **_SIZE,
                     tooltip="Output width in pixels (multiple of 16); 832 at 480p."),
        io.Int.Input("height", default=480, **_SIZE,
                     tooltip="Output height in pixels (multiple of 16); 480 at 480p."),
        io.Int.Input("length", default=93, min=5, max=4097, step=4,
                     tooltip="Frames of the result, 4k+1 (93 official: 24 latent frames)."),
    ]


class LongCatImageToVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LongCatImageToVideo",
            display_name="LongCat Image to Video",
            category="LongCat",
            description="Encodes a start image as the first (clean) latent frame, followed by "
                        "empty frames for LongCat Sampler to generate.",
            inputs=[
                io.Vae.Input("vae", tooltip="The Wan 2.1 VAE (VAELoader)."),
                io.Image.Input("start_image", tooltip="The first frame; resized to width x "
                                                      "height (first image of a batch)."),
                *_size_inputs(),
            ],
            outputs=[io.Latent.Output(tooltip="Latent with the image latent held as "
                                              "conditioning (1 latent frame).")],
        )

    @classmethod
    def execute(cls, vae, start_image, width: int, height: int, length: int) -> io.NodeOutput:
        return io.NodeOutput(encode_cond_latent(vae, start_image[:1], width, height, length))


class LongCatContinueVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LongCatContinueVideo",
            display_name="LongCat Continue Video",
            category="LongCat",
            description="Encodes the last frames of a video as clean conditioning latents, "
                        "followed by empty frames; LongCat Sampler continues the video.",
            inputs=[
                io.Vae.Input("vae", tooltip="The Wan 2.1 VAE (VAELoader)."),
                io.Image.Input("video", tooltip="Frames to continue (IMAGE batch)."),
                io.Int.Input("num_cond_frames", default=13, min=1, max=4097,
                             tooltip="How many of the last frames condition the continuation "
                                     "(13 official: 4 latent frames)."),
                *_size_inputs(),
                io.Float.Input("video_fps", optional=True, force_input=True,
                               tooltip="Frame rate of `video` (connect Get Video Components' "
                                       "fps). When connected, the video is resampled to "
                                       "target_fps first, as the official demo does; when not, "
                                       "its frames are used as they are."),
                io.Float.Input("target_fps", default=STAGE1_FPS, min=1.0, max=240.0, step=0.5,
                               optional=True,
                               tooltip="Frame rate the conditioning frames are taken at: every "
                                       "round(video_fps / target_fps)-th frame (15 official, "
                                       "the rate of the 480p model)."),
            ],
            outputs=[io.Latent.Output(tooltip="Latent with the conditioning frames first; the "
                                              "decoded result repeats them, then continues.")],
        )

    @classmethod
    def execute(cls, vae, video, num_cond_frames: int, width: int, height: int, length: int,
                video_fps: float | None = None, target_fps: float = STAGE1_FPS) -> io.NodeOutput:
        if video_fps is not None:
            stride = fps_stride(video_fps, target_fps)
            video = video[::stride]
            logger.info("LongCat Continue Video: input at %g fps, keeping 1 frame in %d (%g fps): "
                        "%d frames", video_fps, stride, video_fps / stride, video.shape[0])
        if video.shape[0] < num_cond_frames:
            resampled = " after resampling" if video_fps is not None else ""
            raise ValueError(f"video has {video.shape[0]} frames{resampled}, fewer than "
                             f"num_cond_frames={num_cond_frames}; load a longer video")
        frames = video[-num_cond_frames:]
        return io.NodeOutput(encode_cond_latent(vae, frames, width, height, length))


NODES = [LongCatImageToVideo, LongCatContinueVideo]
