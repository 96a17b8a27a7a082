"""Converter: official sharded fp32 dit/ → one bf16 / fp8 safetensors file, streamed tensor by tensor."""

import hashlib
import importlib.util
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import time
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
    with pytest.raises(ValueError, match="exists; add --overwrite"):
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
    assert "\r" not in done.stderr and "ETA" not in done.stderr, done.stderr  # no bar when not a TTY
    assert done.stdout.startswith(f"wrote {dst}"), done
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == 2 and "exists; add --overwrite" in again.stderr, again.stderr
    replaced = subprocess.run(cmd + ["--overwrite"], capture_output=True, text=True, timeout=120, check=False)
    assert replaced.returncode == 0, replaced.stderr


def _cli():
    spec = importlib.util.spec_from_file_location("_convert_cli", REPO / "scripts" / "convert_longcat.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _digests(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def single(official, tmp_path):
    """A one-file fp32 source in its own folder (``models/src.safetensors``)."""
    _, state = official
    folder = tmp_path / "models"
    folder.mkdir()
    save_file(state, str(folder / "src.safetensors"))
    return folder / "src.safetensors"


def test_refuses_dst_that_is_the_source(single, tmp_path):
    """dst == src (by path, symlink or hard link) is refused even with overwrite: the fp32 source
    used to be replaced by its bf16 output."""
    before = _digests(single.parent)
    link = single.parent / "link.safetensors"
    link.symlink_to(single)
    hard = single.parent / "hard.safetensors"
    os.link(single, hard)
    before = _digests(single.parent)
    for dst in (single, link, hard, tmp_path / "models" / ".." / "models" / "src.safetensors"):
        with pytest.raises(ValueError, match="is the source file .*write the output to another file"):
            convert(single, dst, overwrite=True)
    with pytest.raises(ValueError, match="is the source file"):  # through a symlinked source too
        convert(link, single, overwrite=True)
    assert _digests(single.parent) == before
    assert not list(single.parent.glob("*.partial"))


def test_refuses_dst_inside_the_source_folder(official, tmp_path):
    """A new file inside the dit/ folder being read (directly, via its index, or via a symlinked
    path to the folder) is refused; a shard given as dst is the source file."""
    folder, _ = official
    before = _digests(folder)
    alias = tmp_path / "alias"
    alias.symlink_to(folder)
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    for src, dst in ((folder, folder / "new.safetensors"), (index, folder / "new.safetensors"),
                     (folder, alias / "new.safetensors")):
        with pytest.raises(ValueError, match="inside the source folder"):
            convert(src, dst)
    shard = next(folder.glob("*-00001-of-00003.safetensors"))
    with pytest.raises(ValueError, match="is the source file"):
        convert(folder, shard, overwrite=True)
    assert _digests(folder) == before


def test_dst_folder_gets_a_clear_message(official, tmp_path):
    folder, _ = official
    with pytest.raises(ValueError, match="is a folder; give a file name inside it"):
        convert(folder, tmp_path, overwrite=True)


@pytest.mark.parametrize("case", ["folder", "same file", "inside source", "exists", "no folder",
                                  "suffix", "not longcat"])
def test_cli_bad_input_is_one_line_and_writes_nothing(case, official, single, tmp_path, capsys):
    """Each bad input: exit 2, one line naming the file and what to do; no file written or changed."""
    folder, _ = official
    out = tmp_path / "out"
    out.mkdir()
    (out / "kept.safetensors").write_bytes(b"keep me")
    wan = tmp_path / "wan.safetensors"
    save_file({"patch_embedding.weight": torch.zeros(1)}, str(wan))
    src, dst, extra, named, hint = {
        "folder": (folder, out, ["--overwrite"], str(out), "give a file name"),
        "same file": (single, single, ["--overwrite"], str(single), "another file name"),
        "inside source": (folder, folder / "x.safetensors", [], str(folder), "another folder"),
        "exists": (folder, out / "kept.safetensors", [], "kept.safetensors", "--overwrite"),
        "no folder": (folder, out / "nope" / "x.safetensors", [], "nope", "create it"),
        "suffix": (folder, out / "x.bin", [], "x.bin", ".safetensors"),
        "not longcat": (wan, out / "x.safetensors", [], str(wan), "official dit/ folder"),
    }[case]
    before = {p: _digests(p) for p in (folder, out, single.parent)}
    wan_before = wan.read_bytes()
    assert _cli().main([str(src), str(dst), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert named in err and hint in err, err
    assert {p: _digests(p) for p in (folder, out, single.parent)} == before
    assert wan.read_bytes() == wan_before


def test_cli_ctrl_c_in_process(official, tmp_path, capsys, monkeypatch):
    """KeyboardInterrupt mid-write: one line, exit 130, no partial file, existing dst untouched."""
    folder, _ = official
    dst = tmp_path / "o.safetensors"
    dst.write_bytes(b"previous output")
    real = weights.iter_planned

    def interrupted(plan, device="cpu"):
        for i, item in enumerate(real(plan, device)):
            if i == 3:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr("longcat_pack.longcat.convert.iter_planned", interrupted)
    assert _cli().main([str(folder), str(dst), "--overwrite"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted" in err and "Traceback" not in err, err
    assert dst.read_bytes() == b"previous output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.safetensors"]


# Runs the CLI with each tensor write slowed down, printing "tick" per tensor, so a test can send
# a real SIGINT in the middle of the write.
SLOW_CLI = """
import sys, time
sys.path.insert(0, sys.argv[1] + "/scripts")
import convert_longcat as cli
from _standalone import import_pack
import_pack()
import longcat_pack.longcat.convert as conv
real = conv._write_tensors
def slow(out, plan, progress=None):
    def tick(*args):
        print("tick", flush=True)
        time.sleep(0.2)
    real(out, plan, tick)
conv._write_tensors = slow
sys.exit(cli.main(sys.argv[2:]))
"""


def test_cli_ctrl_c_signal(official, tmp_path):
    """A real SIGINT while tensors are written: exit 130, one line on stderr, no partial file."""
    folder, _ = official
    dst = tmp_path / "o.safetensors"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CLI, str(REPO), str(folder), str(dst)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "tick\n"
        proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert err.count("\n") == 1 and err.startswith("interrupted"), err
    assert list(tmp_path.iterdir()) == []


def test_cli_progress_bar_on_a_terminal(official, tmp_path):
    """On a TTY the CLI draws one self-overwriting line: tensors, GiB, rate and ETA, ending at 100%."""
    folder, state = official
    dst = tmp_path / "o.safetensors"
    main_fd, child_fd = pty.openpty()
    proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "convert_longcat.py"), str(folder),
                             str(dst)], stdout=child_fd, stderr=child_fd, stdin=subprocess.DEVNULL)
    os.close(child_fd)
    chunks, deadline = [], time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main_fd], [], [], 1.0)
        if ready:
            try:
                data = os.read(main_fd, 4096)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(main_fd)
    assert proc.wait(timeout=60) == 0
    text = b"".join(chunks).decode()
    n = len(state)
    assert f"0/{n} tensors" in text and f"{n}/{n} tensors" in text, text
    last = next(part for part in text.split("\r") if f"{n}/{n} tensors" in part)
    assert "100%" in last and "MiB/s" in last and "ETA" in last and "GiB" in last, last
    assert f"wrote {dst}" in text


def test_progress_bar_line():
    bar = _cli().ProgressBar(None, width=10)
    line = bar.line(5, 10, 2**30, 4 * 2**30, elapsed=2.0)
    assert line == "5/10 tensors  1.00/4.00 GiB  [##........]  25%  512 MiB/s  ETA 0:06"
    assert "ETA --:--" in bar.line(0, 10, 0, 4 * 2**30, elapsed=0.0)
