"""LongCat Avatar Audio Embeds: AUDIO + a stock audio encoder → the Avatar audio windows."""

import logging

import comfy.model_management
import comfy.utils
import torch
import torchaudio
from comfy_api.latest import io

from ..longcat.avatar import audio as recipe

log = logging.getLogger(__name__)

AudioEmbeds = io.Custom("LONGCAT_AUDIO_EMBEDS")


def _one_clip(audio: dict, name: str) -> tuple[torch.Tensor, int]:
    waveform = audio["waveform"]
    if waveform.ndim != 3 or waveform.shape[0] != 1:
        raise ValueError(f"{name} must hold one clip [1, channels, samples], got {tuple(waveform.shape)}")
    if waveform.shape[-1] == 0:
        raise ValueError(f"{name} is empty")
    return waveform[0].float(), int(audio["sample_rate"])


def mono_16k(audio: dict, name: str) -> torch.Tensor:
    """The clip as 16 kHz mono float64 (channel mean, as the official loader; resampled like the
    stock AudioEncoderEncode)."""
    waveform, rate = _one_clip(audio, name)
    mono = waveform.mean(0, keepdim=True)
    if rate != recipe.SAMPLE_RATE:
        mono = torchaudio.functional.resample(mono, rate, recipe.SAMPLE_RATE)
    return mono[0].double()


def soundtrack(first: dict, second: dict | None, mode: str, seconds: float) -> dict:
    """The track to mux under the video: the input, or both speakers mixed as they are heard
    (para: together; add: one after the other), at the first clip's rate, cut or zero-padded to
    the video's duration."""
    wave, rate = _one_clip(first, "audio")
    if second is not None:
        other, other_rate = _one_clip(second, "audio_2")
        if other_rate != rate:
            other = torchaudio.functional.resample(other, other_rate, rate)
        if wave.shape[0] != other.shape[0]:  # mono joins stereo; other layouts meet in mono
            if 1 in (wave.shape[0], other.shape[0]):
                channels = max(wave.shape[0], other.shape[0])
                wave, other = wave.expand(channels, -1), other.expand(channels, -1)
            else:
                wave, other = wave.mean(0, keepdim=True), other.mean(0, keepdim=True)
        tracks = [recipe.speaker_tracks(a, b, mode) for a, b in zip(wave, other)]
        wave = torch.stack([a + b for a, b in tracks], 0)
    length = round(seconds * rate)
    wave = torch.nn.functional.pad(wave, (0, max(0, length - wave.shape[-1])))[:, :length]
    return {"waveform": wave[None].contiguous(), "sample_rate": rate}


class LongCatAvatarAudioEmbeds(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LongCatAvatarAudioEmbeds",
            display_name="LongCat Avatar Audio Embeds",
            category="LongCat/Avatar",
            description="Runs the official LongCat-Video-Avatar audio recipe with a stock audio "
                        "encoder: whisper-large-v3 → Avatar 1.5 (25 fps), chinese-wav2vec2-base → "
                        "Avatar 1.0 (16 fps). Loudness −23 LUFS, 30 s Whisper chunks (any length, "
                        "with a progress bar), 5-frame windows per video frame.",
            inputs=[
                io.AudioEncoder.Input("audio_encoder", tooltip="Load Audio Encoder: whisper-large-v3 "
                                      "(Avatar 1.5) or chinese-wav2vec2-base (Avatar 1.0)."),
                io.Audio.Input("audio", tooltip="Speech of speaker 1 (Load Audio). Any sample rate "
                               "and channel count; encoded as 16 kHz mono."),
                io.Int.Input("video_frames", default=0, min=0, max=1_000_000,
                             tooltip="Frames of the whole output video the audio drives. 0 = the "
                                     "shortest official length covering the audio (93 + 80·k: one "
                                     "clip plus k extensions). Audio shorter than the video is "
                                     "padded with silence; longer audio is encoded whole and only "
                                     "its start is used."),
                io.Int.Input("seed", default=0, min=0, max=2**32 - 1,
                             tooltip="Seed of Avatar 1.0's −45 dB noise floor (unused by 1.5)."),
                io.Audio.Input("audio_2", optional=True,
                               tooltip="Speech of speaker 2 (two-speaker video)."),
                io.Combo.Input("multi_audio_type", options=["para", "add"], default="para",
                               tooltip="Two speakers: para = both tracks play together (the "
                                       "shorter is padded with silence); add = speaker 1 speaks, "
                                       "then speaker 2."),
                io.Mask.Input("speaker_1_mask", optional=True,
                              tooltip="Where speaker 1 is, drawn on the reference image. Without "
                                      "masks: left and right image halves."),
                io.Mask.Input("speaker_2_mask", optional=True,
                              tooltip="Where speaker 2 is, on the same image."),
                io.Mask.Input("others_mask", optional=True,
                              tooltip="Other, silent people (one mask per person); adds the silent "
                                      "background audio stream of the official two-speaker setup."),
            ],
            outputs=[
                AudioEmbeds.Output("audio_embeds", tooltip="Per-speaker 5-frame audio windows for "
                                   "every output frame, version, fps and masks."),
                io.Audio.Output("audio", tooltip="The soundtrack for the video (speakers mixed as "
                                "heard), cut or padded to the video's duration."),
                io.Int.Output("video_frames", tooltip="Frames of the output the embeds cover."),
            ],
        )

    @classmethod
    def execute(cls, audio_encoder, audio, video_frames: int, seed: int, audio_2=None,
                multi_audio_type: str = "para", speaker_1_mask=None, speaker_2_mask=None,
                others_mask=None) -> io.NodeOutput:
        model = audio_encoder.model
        version = recipe.encoder_version(model)
        fps = recipe.RECIPES[version].fps
        masks = recipe.speaker_masks(speaker_1_mask, speaker_2_mask, others_mask, audio_2 is not None)
        streams = [mono_16k(audio, "audio")]
        if audio_2 is not None:
            streams = list(recipe.speaker_tracks(streams[0], mono_16k(audio_2, "audio_2"), multi_audio_type))
        if masks is not None and masks.shape[0] > 3:
            streams.append(torch.zeros_like(streams[0]))  # the silent background stream
        if video_frames == 0:
            video_frames = recipe.frames_for_audio(max(s.shape[0] for s in streams), fps)
        audio_seconds = max(s.shape[0] for s in streams) / recipe.SAMPLE_RATE
        if audio_seconds > video_frames / fps:
            log.warning("LongCat Avatar: the audio lasts %.2f s but the video covers %.2f s (%d frames at "
                        "%d fps); the rest of the audio is not used", audio_seconds, video_frames / fps,
                        video_frames, fps)
        comfy.model_management.load_model_gpu(audio_encoder.patcher)
        pbar = comfy.utils.ProgressBar(1)

        def progress(done: int, total: int) -> None:
            pbar.update_absolute(done, total)
            comfy.model_management.throw_exception_if_processing_interrupted()

        embeds = recipe.encode_streams(model, streams, video_frames, seed=seed, device=audio_encoder.load_device,
                                       masks=masks, progress=progress)
        track = soundtrack(audio, audio_2, multi_audio_type, video_frames / fps)
        return io.NodeOutput(embeds, track, video_frames)


NODES = [LongCatAvatarAudioEmbeds]
