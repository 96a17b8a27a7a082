"""Test-only node for the Avatar audio tests, registered only with ``LONGCAT_TEST_NODES=1``
(like ``testing.py``): saves LONGCAT_AUDIO_EMBEDS so a server test can read them back."""

from comfy_api.latest import io


class LongCatTestAudioEmbedsSave(io.ComfyNode):
    """Writes LongCat audio embeds to ``output/<name>.safetensors`` so server tests can read them."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LongCatTestAudioEmbedsSave",
            display_name="LongCat Test Audio Embeds Save (tests only)",
            category="LongCat/testing",
            inputs=[io.Custom("LONGCAT_AUDIO_EMBEDS").Input("audio_embeds"),
                    io.String.Input("name", default="longcat_audio_embeds")],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, audio_embeds, name: str) -> io.NodeOutput:
        import os

        import folder_paths
        from safetensors.torch import save_file

        os.makedirs(folder_paths.get_output_directory(), exist_ok=True)
        tensors = {"windows": audio_embeds.windows.contiguous()}
        if audio_embeds.masks is not None:
            tensors["masks"] = audio_embeds.masks.contiguous()
        save_file(tensors, f"{folder_paths.get_output_directory()}/{name}.safetensors",
                  metadata={"version": audio_embeds.version, "fps": str(audio_embeds.fps)})
        return io.NodeOutput(ui={"text": [str(tuple(audio_embeds.windows.shape))]})


NODES = [LongCatTestAudioEmbedsSave]
