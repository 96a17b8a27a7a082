"""LongCat Image to Video and LongCat Continue Video: LATENTs with clean conditioning frames."""

from comfy_api.latest import io

from ..longcat.frames import check_size, latent_frames, round_frames
from ..longcat.pipelines import fit_frames
from .sampling_inputs import cond_latent_dict

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
            ],
            outputs=[io.Latent.Output(tooltip="Latent with the conditioning frames first; the "
                                              "decoded result repeats them, then continues.")],
        )

    @classmethod
    def execute(cls, vae, video, num_cond_frames: int, width: int, height: int,
                length: int) -> io.NodeOutput:
        if video.shape[0] < num_cond_frames:
            raise ValueError(f"video has {video.shape[0]} frames, fewer than num_cond_frames="
                             f"{num_cond_frames}")
        frames = video[-num_cond_frames:]
        return io.NodeOutput(encode_cond_latent(vae, frames, width, height, length))


NODES = [LongCatImageToVideo, LongCatContinueVideo]
