"""Test-only nodes, registered only when the environment sets ``LONGCAT_TEST_NODES=1``.

``LongCatTestTextEncode`` stands in for the 5.7B umT5 text encoder in end-to-end tests: it makes
CONDITIONING shaped like ComfyUI's Wan text encoder output (``[1, 512, 4096]``, real tokens
first, padded positions zero) from a deterministic random draw seeded by the prompt.
``LongCatTestAvatarAudio`` stands in for the audio encoder + LongCat Avatar Audio Embeds: seeded
random ``LONGCAT_AUDIO_EMBEDS`` of a chosen size.
"""

import zlib

import torch
from comfy_api.latest import io

from ..longcat.avatar.embeds import AvatarAudioEmbeds
from .text_condition import TEXT_TOKENS

TEST_NODES_ENV = "LONGCAT_TEST_NODES"


def fake_text_states(text: str, tokens: int, channels: int = 4096) -> torch.Tensor:
    """``[1, 512, channels]``: ``tokens`` deterministic random rows for ``text``, then zeros."""
    generator = torch.Generator("cpu").manual_seed(zlib.crc32(text.encode("utf-8")))
    states = torch.zeros(1, TEXT_TOKENS, channels)
    states[:, :tokens] = torch.randn(1, tokens, channels, generator=generator)
    return states


class LongCatTestTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LongCatTestTextEncode",
            display_name="LongCat Test Text Encode (tests only)",
            category="LongCat/testing",
            description="Deterministic stand-in for CLIPTextEncode (umT5) in tests.",
            inputs=[
                io.String.Input("text", multiline=True, default="",
                                tooltip="Prompt; only seeds the random states."),
                io.Int.Input("tokens", default=8, min=1, max=TEXT_TOKENS,
                             tooltip="How many leading positions are real (non-zero) tokens."),
            ],
            outputs=[io.Conditioning.Output(tooltip="CONDITIONING shaped like umT5's.")],
        )

    @classmethod
    def execute(cls, text: str, tokens: int) -> io.NodeOutput:
        return io.NodeOutput([[fake_text_states(text, tokens), {}]])


class LongCatTestAvatarAudio(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LongCatTestAvatarAudio",
            display_name="LongCat Test Avatar Audio (tests only)",
            category="LongCat/testing",
            description="Seeded random audio embeds for the Avatar nodes in tests.",
            inputs=[
                io.Int.Input("frames", default=93, min=1, max=10000, tooltip="Video frames covered."),
                io.Int.Input("layers", default=5, min=1, max=64, tooltip="Feature layers L."),
                io.Int.Input("channels", default=1280, min=1, max=4096, tooltip="Feature channels C."),
                io.Int.Input("seed", default=0, min=0, max=2**31, tooltip="Random seed."),
            ],
            outputs=[io.Custom("LONGCAT_AUDIO_EMBEDS").Output(tooltip="One speaker's audio windows.")],
        )

    @classmethod
    def execute(cls, frames: int, layers: int, channels: int, seed: int) -> io.NodeOutput:
        windows = torch.randn(1, frames, 5, layers, channels, generator=torch.Generator().manual_seed(seed))
        return io.NodeOutput(AvatarAudioEmbeds(windows, "1.5", 25.0))


NODES = [LongCatTestTextEncode, LongCatTestAvatarAudio]
