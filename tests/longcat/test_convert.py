"""Converter: official sharded fp32 dit/ → one bf16 / fp8 safetensors file, streamed tensor by tensor."""

import json
import struct
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch
from longcat_pack.longcat import weights
from longcat_pack.longcat.convert import convert
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny_dit import random_state

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """A tiny fp32 checkpoint in the official layout: 3 shards + index json."""
    state = random_state(0)
    state["blocks.0.ffn.w1.weight"][0, :3] = torch.tensor([1000.0, -1000.0, 0.3])  # beyond fp8 e4m3 range
    folder = tmp_path_factory.mktemp("ckpt") / "dit"
    folder.mkdir()
    keys, weight_map = sorted(state), {}
    for i in range(3):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-00003.safetensors"
        save_file({k: state[k] for k in keys[i::3]}, str(folder / name))
        weight_map.update({k: name for k in keys[i::3]})
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return folder, state


def test_bf16_output_equals_cast_tensors(official, tmp_path):
    folder, state = official
    out = convert(folder, tmp_path / "longcat_bf16.safetensors", torch.bfloat16)
    loaded = load_file(str(out))
    assert loaded.keys() == state.keys()
    for k, v in state.items():
        assert loaded[k].dtype == torch.bfloat16 and torch.equal(loaded[k], v.bfloat16()), k
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata()["format"] == "pt"
    n = struct.unpack("<Q", out.read_bytes()[:8])[0]
    assert n % 8 == 0  # aligned data start


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_fp8_output(official, tmp_path, dtype):
    folder, state = official
    out = convert(folder, tmp_path / "longcat_fp8.safetensors", dtype)
    loaded = load_file(str(out))
    w1 = loaded["blocks.0.ffn.w1.weight"]
    assert w1.dtype == dtype
    limit = torch.finfo(dtype).max
    assert torch.equal(w1, state["blocks.0.ffn.w1.weight"].clamp(-limit, limit).to(dtype))
    assert torch.isfinite(w1.float()).all()  # clamped, no NaN from out-of-range values
    assert loaded["blocks.0.attn.qkv.bias"].dtype == torch.bfloat16
    assert loaded["x_embedder.proj.weight"].dtype == torch.bfloat16  # 5-D conv stays bf16
    model = weights.load_dit(out)
    with torch.no_grad():
        y = model(torch.randn(1, 4, 2, 4, 4, dtype=torch.bfloat16), torch.tensor([500.0]), torch.randn(1, 3, 32))
    assert torch.isfinite(y).all()


def test_streams_one_tensor_at_a_time(official, tmp_path, monkeypatch):
    """When a tensor is read, every tensor read before it has already been released."""
    folder, state = official
    refs, alive_at_read = [], []
    real_open = weights.safe_open

    class Tracking:
        def __init__(self, *args, **kwargs):
            self.inner = real_open(*args, **kwargs)

        def __enter__(self):
            self.inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

        def get_tensor(self, name):
            alive_at_read.append(sum(r() is not None for r in refs))
            tensor = self.inner.get_tensor(name)
            refs.append(weakref.ref(tensor))
            return tensor

    monkeypatch.setattr(weights, "safe_open", Tracking)
    convert(folder, tmp_path / "o.safetensors", torch.float32)  # fp32 → fp32: no cast copy either
    assert len(alive_at_read) == len(state) and max(alive_at_read) == 0


def test_refuses_existing_output_and_bad_source(official, tmp_path):
    folder, _ = official
    dst = tmp_path / "o.safetensors"
    dst.write_bytes(b"keep me")
    with pytest.raises(ValueError, match="exists; pass overwrite=True"):
        convert(folder, dst)
    assert dst.read_bytes() == b"keep me"
    bad = tmp_path / "wan.safetensors"
    save_file({"patch_embedding.weight": torch.zeros(1)}, str(bad))
    with pytest.raises(ValueError, match="Wan"):
        convert(bad, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
    assert not (tmp_path / "x.safetensors.partial").exists()
    # A missing output folder is a ValueError (the CLI reports it), not a FileNotFoundError.
    with pytest.raises(ValueError, match="does not exist"):
        convert(folder, tmp_path / "no_such_dir" / "x.safetensors")


def test_cli(official, tmp_path):
    folder, _ = official
    dst = tmp_path / "cli.safetensors"
    cmd = [sys.executable, str(REPO / "scripts" / "convert_longcat.py"), str(folder), str(dst), "--dtype", "fp16"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert load_file(str(dst))["final_layer.linear.weight"].dtype == torch.float16
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == 2 and "exists; add --overwrite" in again.stderr, again.stderr
    replaced = subprocess.run(cmd + ["--overwrite"], capture_output=True, text=True, timeout=120, check=False)
    assert replaced.returncode == 0, replaced.stderr
