"""The Avatar nodes in-process in a real ComfyUI (CPU): loader, sampler (three-pass guidance,
progress, previews), extension (overlap, reference, audio offset), LoRA and BSA Settings on an
Avatar MODEL, and the clear errors. A tiny Avatar DiT file is written by the test; the VAE is the
pack's stand-in (the stock Wan VAE would cost a 250 MB random file here)."""

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "longcat"))
import availability
from tiny_avatar import tiny_avatar

pytestmark = pytest.mark.comfyui
LATENT = 8  # 64 px


class StandinVAE:
    """The VAE interface VaeCodec uses (encode frames → raw latent, decode → frames)."""

    def __init__(self, latent_format):
        self.latent_format = latent_format
        self.encoded = []

    def encode(self, frames):
        from longcat_pack.longcat.standin_vae import standin_encode

        self.encoded.append(frames.shape[0])
        return self.latent_format.process_out(standin_encode(frames))

    def decode(self, latent):
        from longcat_pack.longcat.standin_vae import standin_decode

        return standin_decode(self.latent_format.process_in(latent))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    sys.path.insert(0, availability.comfyui_dir("the real-ComfyUI Avatar node tests"))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    from longcat_pack.longcat.avatar.embeds import AvatarAudioEmbeds
    from longcat_pack.nodes import avatar, bsa

    folder = tmp_path_factory.mktemp("avatar_models")
    state = tiny_avatar(seed=0, caption_channels=64, in_channels=16, out_channels=16).state_dict()
    save_file(state, str(folder / "avatar_tiny.safetensors"))
    (folder / "config.json").write_text('{"audio_block": 3, "audio_channel": 8}')
    model = avatar.load_avatar_model(folder, torch.float32)  # a folder: its config.json gives the 3x8 audio
    windows = torch.randn(1, 61, 5, 3, 8, generator=torch.Generator().manual_seed(0))
    embeds = AvatarAudioEmbeds(windows, "1.5", 25.0)
    cond = [[torch.randn(1, 6, 64, generator=torch.Generator().manual_seed(1)), {}]]
    neg = [[torch.zeros(1, 6, 64), {}]]
    return dict(avatar=avatar, bsa=bsa, model=model, embeds=embeds, cond=cond, neg=neg, folder=folder,
                vae=StandinVAE(model.model.latent_format), Embeds=AvatarAudioEmbeds)


def _sample(env, **kw):
    args = dict(model=env["model"], positive=env["cond"], audio_embeds=env["embeds"], vae=env["vae"], width=64,
                height=64, num_frames=29, schedule="normal", steps=2, shift=12.0, text_cfg=4.0, audio_cfg=3.0, seed=3,
                negative=env["neg"], image=torch.rand(1, 48, 80, 3, generator=torch.Generator().manual_seed(2)))
    args.update(kw)
    return env["avatar"].LongCatAvatarSampler.execute(**args)


def test_sampler_runs_the_three_pass_guidance_and_keeps_the_image(env):
    out = _sample(env)
    latent, _ = out.result
    assert latent["samples"].shape == (1, 16, 8, LATENT, LATENT)
    meta = latent[env["avatar"].AVATAR_KEY]
    assert meta["end_frame"] == 29 and meta["ref"].shape == (1, 16, 1, LATENT, LATENT)
    again = _sample(env).result[0]["samples"]
    assert torch.equal(again, latent["samples"])  # seeded
    other_audio = _sample(env, audio_cfg=1.0, text_cfg=1.0).result[0]["samples"]
    assert not torch.equal(other_audio[:, :, 1:], latent["samples"][:, :, 1:])
    assert torch.equal(other_audio[:, :, :1], latent["samples"][:, :, :1])  # the image latent is held


def test_extend_continues_with_overlap_reference_and_audio_offset(env, monkeypatch):
    avatar = env["avatar"]
    first = _sample(env).result[0]
    frames = env["vae"].decode(first["samples"])
    seen = {}
    original = env["Embeds"].segment

    def spy(self, start, count):
        seen["segment"] = (start, count)
        return original(self, start, count)

    monkeypatch.setattr(env["Embeds"], "segment", spy)
    out = avatar.LongCatAvatarExtend.execute(
        model=env["model"], positive=env["cond"], audio_embeds=env["embeds"], vae=env["vae"], previous_latent=first,
        previous_images=frames, schedule="dmd", steps=8, shift=12.0, text_cfg=1.0, audio_cfg=1.0, seed=4,
        ref_index=6, mask_frame_range=1, use_kv_cache=True)
    latent, new_frames, _ = out.result
    assert seen["segment"] == (16, 29)  # 29 - 13 overlap frames
    assert new_frames.shape == (16, 64, 64, 3)  # 29 frames decoded, the 13 overlap frames dropped
    assert latent[avatar.AVATAR_KEY]["end_frame"] == 45
    torch.testing.assert_close(latent[avatar.AVATAR_KEY]["ref"], first[avatar.AVATAR_KEY]["ref"])


def test_bsa_settings_apply_to_the_avatar_model(env):
    settings = env["bsa"].LongCatBSASettings.execute(
        model=env["model"], enable=True, preset="custom", sparsity=0.5, cdf_threshold=0.0, chunk_q="2,2,2",
        chunk_k="2,2,2", start_percent=0.0, end_percent=1.0, dense_blocks="", backend="torch")
    patched = settings.result[0]
    _, report = _sample(env, model=patched, steps=1, text_cfg=1.0, audio_cfg=1.0).result
    # one step, one pass, 2 blocks, each: the image frame's call and the noise frames' call
    assert report.startswith("BSA: 4 sparse self-attention calls over 2 blocks."), report
    dense = _sample(env, steps=1, text_cfg=1.0, audio_cfg=1.0).result[0]["samples"]
    sparse = _sample(env, model=patched, steps=1, text_cfg=1.0, audio_cfg=1.0).result[0]["samples"]
    assert (dense - sparse).abs().max() > 0


def test_clear_errors(env):
    avatar = env["avatar"]
    wrong = env["Embeds"](torch.zeros(1, 61, 5, 12, 768), "1.0", 16.0)
    with pytest.raises(ValueError, match="audio_embeds are 12x768 .Avatar 1.0. but this DiT takes 3x8"):
        _sample(env, audio_embeds=wrong)
    with pytest.raises(ValueError, match="set the audio embeds node's frame count to at least 93"):
        _sample(env, num_frames=93)
    with pytest.raises(ValueError, match="negative is required"):
        _sample(env, negative=None)
    with pytest.raises(ValueError, match="previous_latent must come from LongCat Avatar Sampler"):
        avatar.LongCatAvatarExtend.execute(
            model=env["model"], positive=env["cond"], audio_embeds=env["embeds"], vae=env["vae"],
            previous_latent={"samples": torch.zeros(1, 16, 8, 8, 8)}, previous_images=torch.zeros(29, 64, 64, 3),
            schedule="dmd", steps=8, shift=12.0, text_cfg=1.0, audio_cfg=1.0, seed=0, ref_index=10,
            mask_frame_range=3, use_kv_cache=True)
    with pytest.raises(TypeError, match="Load LongCat-Video-Avatar Model"):
        avatar.check_avatar(object())


def test_official_format_lora_patches_the_avatar_model(env):
    """A LoRA in the official format (the DMD LoRA's) with a split qkv up-projection and an audio
    target, through LongCat LoRA: the Avatar MODEL's output changes, and strength 0 restores it."""
    import folder_paths
    from longcat_pack.nodes.loading import LongCatLoRA

    sep, rank = "___lorahyphen___", 2
    gen = torch.Generator().manual_seed(5)
    lora = {}
    for path, parts, (out, inp) in (("blocks.0.attn.qkv", 3, (192, 64)),
                                    ("blocks.1.audio_cross_attn.q_linear", 1, (64, 64))):
        name = "lora___lorahyphen___" + path.replace(".", sep)
        lora[name + ".lora_down.weight"] = torch.randn(parts * rank, inp, generator=gen) * 0.3
        if parts == 1:
            lora[name + ".lora_up.weight"] = torch.randn(out, rank, generator=gen) * 0.3
        for i in range(parts if parts > 1 else 0):
            lora[f"{name}.lora_up.blocks.{i}.weight"] = torch.randn(out // parts, rank, generator=gen) * 0.3
        lora[name + ".alpha_scale"] = torch.tensor(0.5)
    save_file(lora, str(env["folder"] / "avatar_dmd_tiny.safetensors"))
    folder_paths.add_model_folder_path("loras", str(env["folder"]))
    run = {"steps": 1, "text_cfg": 1.0, "audio_cfg": 1.0}
    plain = _sample(env, **run).result[0]["samples"]
    patched = LongCatLoRA.execute(model=env["model"], lora_name="avatar_dmd_tiny.safetensors", strength=1.0)
    assert (_sample(env, model=patched.result[0], **run).result[0]["samples"] - plain).abs().max() > 1e-4
    zero = LongCatLoRA.execute(model=env["model"], lora_name="avatar_dmd_tiny.safetensors", strength=0.0)
    torch.testing.assert_close(_sample(env, model=zero.result[0], **run).result[0]["samples"], plain)
