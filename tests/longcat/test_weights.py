"""Weight loading: official sharded dit/ folder, single files, dtypes, config inference, bad files."""

import json

import pytest
import torch
from longcat_pack.longcat import weights
from longcat_pack.longcat.dit import LongCatVideoDiT
from safetensors.torch import save_file
from tiny_dit import TINY, random_state


def write_sharded(folder, state, shards=3):
    """Official layout: diffusion_pytorch_model-0000i-of-0000n.safetensors + index json."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = sorted(state)
    weight_map = {}
    for i in range(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k].contiguous() for k in keys[i::shards]}
        save_file(part, str(folder / name))
        weight_map.update({k: name for k in part})
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return folder


def test_infer_config_from_shapes():
    state = random_state()
    assert weights.infer_config(state) == {**TINY, "mlp_ratio": 4, "patch_size": (1, 2, 2)}


def test_infer_config_full_size_on_meta():
    shapes = LongCatVideoDiT(device="meta").state_dict()
    cfg = weights.infer_config(shapes)
    assert (cfg["hidden_size"], cfg["depth"], cfg["num_heads"], cfg["in_channels"]) == (4096, 48, 32, 16)


def test_load_sharded_folder_equals_state(tmp_path):
    state = random_state()
    folder = write_sharded(tmp_path / "dit", state)
    (folder / "config.json").write_text(json.dumps({"text_tokens_zero_pad": False}))
    loaded = weights.load_state_dict(folder)
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    model = weights.load_dit(folder)
    assert model.text_tokens_zero_pad is False
    assert torch.equal(model.blocks[1].ffn.w2.weight, state["blocks.1.ffn.w2.weight"])



def test_load_dit_reads_each_header_once(tmp_path, monkeypatch):
    folder = write_sharded(tmp_path / "dit", random_state())
    reads = []
    real = weights.read_header
    monkeypatch.setattr(weights, "read_header", lambda path: reads.append(path.name) or real(path))
    infos, config = weights.inspect_checkpoint(folder)
    state = weights.read_tensors(infos)
    assert sorted(reads) == sorted(set(reads)) and len(reads) == 3
    assert config == weights.infer_config(state)
    reads.clear()
    weights.load_dit(folder)
    assert len(reads) == 3

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.float8_e5m2])
def test_load_single_file_with_storage_dtype(tmp_path, dtype):
    state = random_state()
    save_file(state, str(tmp_path / "dit.safetensors"))
    model = weights.load_dit(tmp_path / "dit.safetensors", dtype=dtype)
    qkv = model.blocks[0].attn.qkv
    assert qkv.weight.dtype == dtype
    expected_small = torch.bfloat16 if dtype in weights.FP8_DTYPES else dtype
    assert qkv.bias.dtype == model.blocks[0].attn.q_norm.weight.dtype == expected_small
    assert model.text_tokens_zero_pad is True
    x = torch.randn(1, 4, 2, 4, 4, dtype=torch.bfloat16)
    with torch.no_grad():
        out = model(x, torch.tensor([500.0]), torch.randn(1, 3, 32))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_bf16_file_is_not_materialised_in_fp32(tmp_path, monkeypatch):
    state = {k: v.bfloat16() for k, v in random_state().items()}
    save_file(state, str(tmp_path / "dit.safetensors"))
    upcasts = []
    real = weights.cast_tensor
    monkeypatch.setattr(weights, "cast_tensor", lambda t, d: upcasts.append((t.dtype, d)) or real(t, d))
    loaded = weights.load_state_dict(tmp_path / "dit.safetensors")
    assert all(v.dtype == torch.bfloat16 for v in loaded.values())
    assert all(src == dst == torch.bfloat16 for src, dst in upcasts)


def test_load_dit_builds_on_meta_without_random_init(tmp_path, monkeypatch):
    save_file(random_state(), str(tmp_path / "dit.safetensors"))
    devices = []
    real_init = LongCatVideoDiT.__init__

    def spy(self, *args, device=None, **kwargs):
        devices.append(device)
        real_init(self, *args, device=device, **kwargs)

    monkeypatch.setattr(LongCatVideoDiT, "__init__", spy)
    model = weights.load_dit(tmp_path / "dit.safetensors")
    assert "meta" in devices and not any(p.is_meta for p in model.parameters())


def test_comfy_prefix_stripped(tmp_path):
    state = {f"model.diffusion_model.{k}": v for k, v in random_state().items()}
    save_file(state, str(tmp_path / "dit.safetensors"))
    assert "blocks.0.attn.qkv.weight" in weights.load_state_dict(tmp_path / "dit.safetensors")


def test_full_size_header_validates_without_loading(tmp_path):
    """1022 keys at published shapes pass the check from shapes alone."""
    shapes = {k: tuple(v.shape) for k, v in LongCatVideoDiT(device="meta").state_dict().items()}
    weights.check_keys(shapes, weights.infer_config(shapes))


# ---------------------------------------------------------------- errors

def test_wan_checkpoint_named(tmp_path):
    save_file({"patch_embedding.weight": torch.zeros(2, 2), "blocks.0.self_attn.q.weight": torch.zeros(2, 2)},
              str(tmp_path / "wan.safetensors"))
    with pytest.raises(ValueError, match="not a LongCat-Video DiT.*Wan"):
        weights.load_state_dict(tmp_path / "wan.safetensors")


def test_missing_unexpected_and_wrong_shape_keys_listed(tmp_path):
    state = random_state()
    state.pop("blocks.1.ffn.w3.weight")
    state["blocks.0.extra.weight"] = torch.zeros(3)
    state["blocks.0.attn.proj.bias"] = torch.zeros(65)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError) as err:
        weights.load_state_dict(tmp_path / "bad.safetensors")
    msg = str(err.value)
    assert "missing 1: blocks.1.ffn.w3.weight" in msg
    assert "unexpected 1: blocks.0.extra.weight" in msg
    assert "blocks.0.attn.proj.bias (65,) != (64,)" in msg


def test_truncated_file_names_tensors(tmp_path):
    path = tmp_path / "dit.safetensors"
    save_file(random_state(), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 5000])
    with pytest.raises(ValueError, match="truncated.*tensors past the end: "):
        weights.load_state_dict(path)


def test_corrupt_header(tmp_path):
    path = tmp_path / "dit.safetensors"
    save_file(random_state(), str(path))
    data = bytearray(path.read_bytes())
    data[10:20] = b"\xff" * 10
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt safetensors header"):
        weights.load_state_dict(path)


def test_not_safetensors(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_bytes(b"hello world, definitely not a safetensors file")
    with pytest.raises(ValueError, match="not a safetensors file"):
        weights.load_state_dict(path)


def test_pickle_never_loaded(tmp_path, monkeypatch):
    path = tmp_path / "dit.pt"
    torch.save({"x": torch.zeros(1)}, path)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load must not be called"))
    with pytest.raises(ValueError, match="pickle files are never loaded"):
        weights.load_state_dict(path)


def test_missing_shard_named(tmp_path):
    folder = write_sharded(tmp_path / "dit", random_state())
    (folder / "diffusion_pytorch_model-00002-of-00003.safetensors").unlink()
    with pytest.raises(ValueError, match="shard diffusion_pytorch_model-00002-of-00003.safetensors is missing"):
        weights.load_state_dict(folder)


def test_bad_dtype_rejected(tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        weights.load_state_dict(tmp_path, dtype=torch.int8)

