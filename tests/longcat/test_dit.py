"""LongCat DiT: full-size key/shape/param count on meta, and a tiny model against an independent
re-derivation of the official math."""

import math

import pytest
import torch
import torch.nn.functional as F
from longcat_pack.longcat import dit as dit_module
from longcat_pack.longcat.dit import LongCatVideoDiT
from longcat_pack.longcat.layers import cast_ops, linear_fp32, timestep_features
from tiny_dit import TINY, tiny_dit

# fp32 end to end: differences are summation order only.
ATOL = 2e-5


def inputs(b=2, t=3, h=4, w=6, seed=1, length=7):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, TINY["in_channels"], t, h, w, generator=g)
    ctx = torch.randn(b, length, TINY["caption_channels"], generator=g)
    mask = torch.ones(b, length)
    mask[-1, 4:] = 0  # last item has 3 pad tokens
    return x, ctx, mask


# ---------------------------------------------------------------- full size (meta device)

def _expected_full_shapes():
    """The official checkpoint's keys and shapes, written out."""
    top = {
        "x_embedder.proj.weight": (4096, 16, 1, 2, 2), "x_embedder.proj.bias": (4096,),
        "t_embedder.mlp.0.weight": (512, 256), "t_embedder.mlp.0.bias": (512,),
        "t_embedder.mlp.2.weight": (512, 512), "t_embedder.mlp.2.bias": (512,),
        "y_embedder.y_proj.0.weight": (4096, 4096), "y_embedder.y_proj.0.bias": (4096,),
        "y_embedder.y_proj.2.weight": (4096, 4096), "y_embedder.y_proj.2.bias": (4096,),
        "final_layer.adaLN_modulation.1.weight": (8192, 512), "final_layer.adaLN_modulation.1.bias": (8192,),
        "final_layer.linear.weight": (64, 4096), "final_layer.linear.bias": (64,),
    }
    block = {
        "adaLN_modulation.1.weight": (24576, 512), "adaLN_modulation.1.bias": (24576,),
        "pre_crs_attn_norm.weight": (4096,), "pre_crs_attn_norm.bias": (4096,),
        "attn.qkv.weight": (12288, 4096), "attn.qkv.bias": (12288,),
        "attn.q_norm.weight": (128,), "attn.k_norm.weight": (128,),
        "attn.proj.weight": (4096, 4096), "attn.proj.bias": (4096,),
        "cross_attn.q_linear.weight": (4096, 4096), "cross_attn.q_linear.bias": (4096,),
        "cross_attn.kv_linear.weight": (8192, 4096), "cross_attn.kv_linear.bias": (8192,),
        "cross_attn.proj.weight": (4096, 4096), "cross_attn.proj.bias": (4096,),
        "cross_attn.q_norm.weight": (128,), "cross_attn.k_norm.weight": (128,),
        "ffn.w1.weight": (11008, 4096), "ffn.w2.weight": (4096, 11008), "ffn.w3.weight": (11008, 4096),
    }
    for i in range(48):
        top.update({f"blocks.{i}.{k}": v for k, v in block.items()})
    return top


def test_full_size_on_meta_matches_published_keys_shapes_and_count():
    model = LongCatVideoDiT(device="meta")
    state = model.state_dict()
    assert all(t.is_meta for t in state.values())
    assert {k: tuple(v.shape) for k, v in state.items()} == _expected_full_shapes()
    assert len(state) == 1022
    assert sum(t.numel() for t in state.values()) == 13_581_071_424


def test_full_size_meta_with_comfy_style_cast_ops():
    model = LongCatVideoDiT(device="meta", dtype=torch.bfloat16, operations=cast_ops)
    assert sum(p.numel() for p in model.parameters()) == 13_581_071_424
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


# ---------------------------------------------------------------- independent re-derivation

def _rms(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w


def _rope_complex(x, grid, offset_t=0):
    """RoPE via complex multiplication of adjacent pairs; x [B, heads, S, D], S over the grid."""
    d = x.shape[-1]
    dh = 2 * (d // 6)
    dt = d - 2 * dh
    tt, hh, ww = torch.meshgrid(torch.arange(grid[0]) + offset_t, torch.arange(grid[1]),
                                torch.arange(grid[2]), indexing="ij")
    parts = []
    for pos, dim in ((tt, dt), (hh, dh), (ww, dh)):
        inv = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        parts.append(pos.reshape(-1, 1).double() * inv)
    angle = torch.cat(parts, dim=1)  # [S, D/2]
    xc = torch.view_as_complex(x.double().reshape(*x.shape[:-1], d // 2, 2).contiguous())
    return torch.view_as_real(xc * torch.polar(torch.ones_like(angle), angle)).reshape(x.shape).float()


def _softmax_attn(q, k, v, allowed=None):
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if allowed is not None:
        s = s.masked_fill(~allowed, float("-inf"))
    return s.softmax(-1) @ v


def reference_forward(sd, x, t, ctx, mask, zero_pad=True, n_cond=0, heads=2):
    """Official LongCat math in fp32, written independently of longcat/dit.py."""
    b, cin, nt, H, W = x.shape
    c = sd["x_embedder.proj.weight"].shape[0]
    d = c // heads
    gi, gj = H // 2, W // 2
    xp = x.reshape(b, cin, nt, gi, 2, gj, 2)
    tok = torch.einsum("bctipjq,ocpq->btijo", xp, sd["x_embedder.proj.weight"][:, :, 0]) + sd["x_embedder.proj.bias"]
    n = nt * gi * gj
    xs = tok.reshape(b, n, c)
    tf = t.to(torch.bfloat16).float()[:, None].expand(b, nt).clone()
    tf[:, :n_cond] = 0
    half = sd["t_embedder.mlp.0.weight"].shape[1] // 2
    args = tf[..., None] * torch.exp(-math.log(10000) * torch.arange(half) / half)
    temb = F.linear(torch.cat([args.cos(), args.sin()], -1), sd["t_embedder.mlp.0.weight"], sd["t_embedder.mlp.0.bias"])
    temb = F.linear(F.silu(temb), sd["t_embedder.mlp.2.weight"], sd["t_embedder.mlp.2.bias"])
    y, valid = _reference_text(sd, ctx, mask, zero_pad)
    hw = gi * gj
    cond_tok = n_cond * hw
    allowed = torch.ones(n, n, dtype=torch.bool)
    allowed[:cond_tok, cond_tok:] = False  # cond queries see only cond keys
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))

    def per_frame(v):  # [B, T, C] -> broadcast over each frame's tokens
        return v[:, :, None, :].expand(b, nt, hw, v.shape[-1]).reshape(b, n, -1)

    for i in range(depth):
        p = {k[len(f"blocks.{i}."):]: v for k, v in sd.items() if k.startswith(f"blocks.{i}.")}.__getitem__
        mod = F.linear(F.silu(temb), p("adaLN_modulation.1.weight"), p("adaLN_modulation.1.bias"))
        sh_a, sc_a, g_a, sh_f, sc_f, g_f = (per_frame(m) for m in mod.split(c, dim=-1))
        h = F.layer_norm(xs, (c,), eps=1e-6) * (1 + sc_a) + sh_a
        qkv = F.linear(h, p("attn.qkv.weight"), p("attn.qkv.bias")).reshape(b, n, 3, heads, d).permute(2, 0, 3, 1, 4)
        q = _rope_complex(_rms(qkv[0], p("attn.q_norm.weight")), (nt, gi, gj))
        k = _rope_complex(_rms(qkv[1], p("attn.k_norm.weight")), (nt, gi, gj))
        o = _softmax_attn(q, k, qkv[2], allowed).transpose(1, 2).reshape(b, n, c)
        xs = xs + g_a * F.linear(o, p("attn.proj.weight"), p("attn.proj.bias"))
        h = F.layer_norm(xs, (c,), p("pre_crs_attn_norm.weight"), p("pre_crs_attn_norm.bias"), eps=1e-6)
        q = F.linear(h, p("cross_attn.q_linear.weight"), p("cross_attn.q_linear.bias")).reshape(b, n, heads, d)
        q = _rms(q, p("cross_attn.q_norm.weight")).transpose(1, 2)
        kv = F.linear(y, p("cross_attn.kv_linear.weight"), p("cross_attn.kv_linear.bias")).reshape(b, -1, 2, heads, d)
        k = _rms(kv[:, :, 0], p("cross_attn.k_norm.weight")).transpose(1, 2)
        v = kv[:, :, 1].transpose(1, 2)
        o = torch.stack([_softmax_attn(q[j], k[j][:, valid[j]], v[j][:, valid[j]]) for j in range(b)])
        o = F.linear(o.transpose(1, 2).reshape(b, n, c), p("cross_attn.proj.weight"), p("cross_attn.proj.bias"))
        o[:, :cond_tok] = 0
        xs = xs + o
        h = F.layer_norm(xs, (c,), eps=1e-6) * (1 + sc_f) + sh_f
        f = F.linear(F.silu(F.linear(h, p("ffn.w1.weight"))) * F.linear(h, p("ffn.w3.weight")), p("ffn.w2.weight"))
        xs = xs + g_f * f
    shift, scale = (per_frame(m) for m in F.linear(
        F.silu(temb), sd["final_layer.adaLN_modulation.1.weight"], sd["final_layer.adaLN_modulation.1.bias"]).split(c, -1))
    feats = F.linear(F.layer_norm(xs, (c,), eps=1e-6) * (1 + scale) + shift,
                     sd["final_layer.linear.weight"], sd["final_layer.linear.bias"])
    return _reference_unpatchify(feats.reshape(b, nt, gi, gj, -1), H, W)


def _reference_text(sd, ctx, mask, zero_pad):
    """Caption MLP on all tokens → (y ``[B, L, C]``, per-item bool ``[B, L]`` of attended tokens)."""
    y = F.linear(F.gelu(F.linear(ctx, sd["y_embedder.y_proj.0.weight"], sd["y_embedder.y_proj.0.bias"]),
                        approximate="tanh"), sd["y_embedder.y_proj.2.weight"], sd["y_embedder.y_proj.2.bias"])
    if zero_pad:
        return y * mask[..., None], torch.ones_like(mask, dtype=torch.bool)
    return y, mask.bool()


def _reference_unpatchify(fg, H, W):
    """Features ``[B, T, H/2, W/2, 4·C_out]`` → ``[B, C_out, T, H, W]`` (patch 1×2×2)."""
    b, nt = fg.shape[:2]
    cout = fg.shape[-1] // 4
    out = torch.zeros(b, cout, nt, H, W)
    for hp in range(2):
        for wp in range(2):  # pixel (c, t, 2i+hp, 2j+wp) = feature (hp·2 + wp)·C_out + c
            sl = fg[..., (hp * 2 + wp) * cout:(hp * 2 + wp + 1) * cout]
            out[:, :, :, hp::2, wp::2] = sl.permute(0, 4, 1, 2, 3)
    return out


@pytest.mark.parametrize("zero_pad", [True, False])
def test_forward_matches_rederivation(zero_pad):
    model = tiny_dit(text_tokens_zero_pad=zero_pad)
    x, ctx, mask = inputs()
    t = torch.tensor([998.27, 443.02])
    with torch.no_grad():
        out = model(x, t, ctx, mask)
    ref = reference_forward(model.state_dict(), x, t, ctx, mask, zero_pad=zero_pad)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=1e-4)


def test_conditioning_split_matches_rederivation():
    model = tiny_dit()
    x, ctx, mask = inputs(t=4)
    t = torch.tensor([700.0, 300.0])
    with torch.no_grad():
        out = model(x, t, ctx, mask, num_cond_latents=2)
    ref = reference_forward(model.state_dict(), x, t, ctx, mask, n_cond=2)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=1e-4)


# ---------------------------------------------------------------- single invariants

def test_timestep_features_cos_first():
    t = torch.tensor([[0.0, 3.0, 998.0]])
    feats = timestep_features(t, 16)
    i = torch.arange(8)
    args = 998.0 * torch.exp(-math.log(10000.0) * i / 8)
    torch.testing.assert_close(feats[0, 2, :8], torch.cos(args))
    torch.testing.assert_close(feats[0, 2, 8:], torch.sin(args))
    assert torch.equal(feats[0, 0, :8], torch.ones(8))  # cos(0) = 1 first


def test_timesteps_rounded_to_bf16_regardless_of_weight_dtype():
    model = tiny_dit()
    seen = []
    hook = model.t_embedder.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    x, ctx, _ = inputs(b=1)
    with torch.no_grad():
        a = model(x, torch.tensor([998.27]), ctx)
        b = model(x, torch.tensor([1000.0]), ctx)
        model(x, torch.tensor([[443.02, 11.869, 996.47]]), ctx)
    hook.remove()
    torch.testing.assert_close(a, b, atol=0, rtol=0)  # 998.27 rounds to 1000 in bf16
    assert seen[0].dtype == torch.float32
    assert seen[2].tolist() == [[444.0, 11.875, 996.0]]


def test_unpatchify_feature_order():
    model = tiny_dit()
    cout = TINY["out_channels"]
    tokens = torch.randn(1, 2 * 3 * 4, 4 * cout)
    out = model.unpatchify(tokens, (2, 3, 4))
    t, i, j, hp, wp, c = 1, 2, 3, 1, 0, 2
    assert out[0, c, t, 2 * i + hp, 2 * j + wp] == tokens[0, (t * 3 + i) * 4 + j, (hp * 2 + wp) * cout + c]


def test_adaln_chunk_order_gate_msa_zero_removes_attention():
    """Only chunk 2 (gate_msa) gates self-attention: zeroing its rows makes attention irrelevant."""
    model = tiny_dit()
    c = TINY["hidden_size"]
    x, ctx, mask = inputs()
    with torch.no_grad():
        for blk in model.blocks:
            lin = blk.adaLN_modulation[1]
            lin.weight[2 * c:3 * c] = 0
            lin.bias[2 * c:3 * c] = 0
        base = model(x, torch.tensor([500.0, 500.0]), ctx, mask)
        for blk in model.blocks:
            blk.attn.proj.weight.mul_(5.0)  # change the attention branch only
        changed = model(x, torch.tensor([500.0, 500.0]), ctx, mask)
    torch.testing.assert_close(base, changed, atol=0, rtol=0)


def test_modulation_is_per_frame():
    """Per-frame timesteps: changing frame 2's t changes frame 2 directly; frame 0 only through attention."""
    model = tiny_dit(depth=1)
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.proj.weight.zero_()  # cut token mixing: frames no longer interact
            blk.attn.proj.bias.zero_()
    x, ctx, _ = inputs(b=1)
    with torch.no_grad():
        a = model(x, torch.tensor([[100.0, 200.0, 300.0]]), ctx)
        b = model(x, torch.tensor([[100.0, 200.0, 900.0]]), ctx)
    torch.testing.assert_close(a[:, :, :2], b[:, :, :2], atol=0, rtol=0)
    assert not torch.allclose(a[:, :, 2], b[:, :, 2])


def test_zero_pad_pads_do_not_depend_on_pad_embeddings_and_differ_from_trimming():
    model = tiny_dit(text_tokens_zero_pad=True)
    x, ctx, mask = inputs()
    ctx2 = ctx.clone()
    ctx2[1, 4:] = torch.randn(3, TINY["caption_channels"])
    with torch.no_grad():
        a = model(x, torch.tensor([500.0, 500.0]), ctx, mask)
        b = model(x, torch.tensor([500.0, 500.0]), ctx2, mask)
        trimmed = model(x[1:], torch.tensor([500.0]), ctx[1:, :4], None)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.allclose(a[1:], trimmed, atol=1e-4)  # pads still attend (k = k_norm(bias_k))


def test_no_zero_pad_equals_trimmed_context():
    model = tiny_dit(text_tokens_zero_pad=False)
    x, ctx, mask = inputs()
    with torch.no_grad():
        a = model(x, torch.tensor([500.0, 500.0]), ctx, mask)
        trimmed = model(x[1:], torch.tensor([500.0]), ctx[1:, :4], None)
    torch.testing.assert_close(a[1:], trimmed, atol=ATOL, rtol=1e-4)


def test_context_batch_one_broadcasts_and_4d_context_accepted():
    model = tiny_dit()
    x, ctx, _ = inputs()
    with torch.no_grad():
        a = model(x, torch.tensor([500.0]), ctx[:1])
        b = model(x, torch.tensor([500.0, 500.0]), ctx[:1].expand(2, -1, -1)[:, None])
    torch.testing.assert_close(a, b, atol=ATOL, rtol=1e-4)  # strided vs contiguous matmul order


def test_bf16_model_keeps_fp32_islands_and_returns_fp32():
    model = tiny_dit().to(torch.bfloat16)
    captured = {}

    def record(name):
        def hook(mod, args, out):
            captured[name] = (args[0].dtype, out.dtype)  # returns None: output unchanged
        return hook

    model.t_embedder.register_forward_hook(record("temb"))
    x, ctx, mask = inputs()
    with torch.no_grad():
        out = model(x.bfloat16(), torch.tensor([500.0, 20.0]), ctx, mask)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert captured["temb"] == (torch.float32, torch.float32)
    ref = reference_forward({k: v.float() for k, v in model.state_dict().items()}, x.bfloat16().float(),
                            torch.tensor([500.0, 20.0]), ctx.bfloat16().float(), mask)
    # bf16 activations between fp32 islands: errors of a few bf16 ulps of O(1) values.
    torch.testing.assert_close(out, ref, atol=0.1, rtol=0.05)


def test_linear_fp32_upcasts_plain_layers_and_lets_comfy_ops_cast_themselves():
    lin = torch.nn.Linear(8, 4).to(torch.bfloat16)
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    out = linear_fp32(lin, x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, F.linear(x.float(), lin.weight.float(), lin.bias.float()))

    class ComfyLike(cast_ops.Linear):  # ComfyUI op: casts (and patches) its own weights
        comfy_cast_weights = True
        seen = []

        def forward(self, x):
            self.seen.append(x.dtype)
            return super().forward(x)

    op = ComfyLike(8, 4, dtype=torch.bfloat16)
    op.load_state_dict(lin.state_dict())
    torch.testing.assert_close(linear_fp32(op, x), out)
    assert ComfyLike.seen == [torch.float32]


def test_fp8_weights_with_cast_ops_run():
    model = tiny_dit()
    fp8 = LongCatVideoDiT(**TINY, operations=cast_ops, device="meta")
    state = {k: (v.to(torch.float8_e4m3fn) if v.ndim == 2 else v.bfloat16()) for k, v in model.state_dict().items()}
    fp8.load_state_dict(state, assign=True)
    assert fp8.blocks[0].attn.qkv.weight.dtype == torch.float8_e4m3fn
    x, ctx, mask = inputs()
    with torch.no_grad():
        out = fp8(x.bfloat16(), torch.tensor([500.0, 20.0]), ctx, mask)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_injected_attention_gets_transformer_options_and_patches_replace():
    calls = []

    def spy_attention(q, k, v, heads, skip_reshape=False, transformer_options=None, **kw):
        calls.append((q.shape, transformer_options["block_index"], transformer_options.get("marker")))
        return dit_module.sdpa_attention(q, k, v, heads, skip_reshape=skip_reshape)

    model = tiny_dit(attention=spy_attention)
    x, ctx, mask = inputs()
    patched = []

    def patch(args, extra):
        patched.append(sorted(args))
        out = extra["original_block"](args)
        return {"img": out["img"] * 1.0}

    opts = {"marker": "m", "patches_replace": {"dit": {("double_block", 1): patch}}}
    with torch.no_grad():
        a = model(x, torch.tensor([500.0, 500.0]), ctx, mask, transformer_options=opts)
    assert "block_index" not in opts  # the caller's dict is not mutated
    assert patched == [["img", "pe", "transformer_options", "txt", "vec"]]
    assert [c[1] for c in calls] == [0, 0, 1, 1]  # self + cross per block, block index set
    assert all(c[2] == "m" for c in calls)
    with torch.no_grad():
        b = tiny_dit()(x, torch.tensor([500.0, 500.0]), ctx, mask)
    torch.testing.assert_close(a, b, atol=ATOL, rtol=1e-4)


def test_skip_cross_attn_needs_no_context():
    model = tiny_dit()
    x, ctx, _ = inputs()
    with torch.no_grad():
        out = model(x, torch.tensor([0.0, 0.0]), None, skip_cross_attn=True)
        other = model(x, torch.tensor([0.0, 0.0]), ctx * 5, skip_cross_attn=True)
    torch.testing.assert_close(out, other, atol=0, rtol=0)


@pytest.mark.parametrize("bad", [
    dict(x=torch.zeros(1, 4, 2, 5, 4)),                     # odd height
    dict(x=torch.zeros(1, 3, 2, 4, 4)),                     # wrong channels
    dict(timestep=torch.zeros(1, 5)),                       # wrong frame count
    dict(num_cond_latents=2),                               # all frames conditioning
    dict(context=None),                                     # context missing
])
def test_bad_input_raises_value_error(bad):
    model = tiny_dit()
    _, ctx, _ = inputs(b=1)
    args = dict(x=torch.zeros(1, 4, 2, 4, 4), timestep=torch.zeros(1), context=ctx)
    args.update(bad)
    with pytest.raises(ValueError):
        model(args.pop("x"), args.pop("timestep"), args.pop("context"), **args)
