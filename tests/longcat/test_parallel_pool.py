"""Worker processes of multi-GPU context parallel (longcat/parallel/pool.py) on CPU with Gloo.

What the LongCat Multi-GPU node relies on: workers start, take rank 0's current weights (again
after a change), run whole sampling loops with rank 0 (KV cache included) to the single-process
result, survive a cancelled run, and stop, with no process left, on request, on garbage
collection, when rank 0 dies and when a worker is killed or hangs mid-step (bounded error).
"""

import gc
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from kijai_layout import kijai_lora, to_kijai_scaled_fp8
from longcat_pack.longcat import weights
from longcat_pack.longcat.bsa_settings import BSASettings
from longcat_pack.longcat.layers import cast_ops
from longcat_pack.longcat.lora import merge_lora, parse_lora
from longcat_pack.longcat.parallel.pool import WorkerError, WorkerPool, pick_devices
from longcat_pack.longcat.pipelines import TextCondition, denoise, make_dit_fn
from safetensors.torch import save_file
from tiny_dit import TINY, random_state, tiny_dit

CONFIG = {**TINY, "hidden_size": 128, "num_heads": 4}
TIMEOUT = 60.0


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state != "Z"


def wait_gone(pids, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not any(running(pid) for pid in pids):
            return True
        time.sleep(0.1)
    return False


def assert_same(got, want):
    """One process's result: fp32, 1e-6 relative (a shard's matmuls see fewer rows, which may
    round differently; a real mistake is ~0.1)."""
    assert float((got - want).abs().max()) <= 1e-6 * float(want.abs().max())


def inputs(t=3, h=6, w=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 4, t, h, w, generator=g), torch.randn(1, 6, 32, generator=g)


def pool_dit_fn(pool, model):
    """A pipelines ``dit_fn`` whose every DiT call runs on all ranks (what the node's runner does)."""
    def dit_fn(x, timestep, context, context_mask=None, **kwargs):
        opts = {"sigmas": (timestep.float().max() / 1000).reshape(1)}
        return pool.forward(model, x, timestep, context, context_mask, transformer_options=opts, **kwargs)

    return dit_fn


def test_devices_are_rank0s_then_the_next_gpus(monkeypatch):
    assert pick_devices("cpu", 3) == [torch.device("cpu")] * 3
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert pick_devices("cuda:1", 3) == [torch.device("cuda", i) for i in (1, 0, 2)]
    with pytest.raises(ValueError, match="8 GPUs requested but only 4 CUDA device"):
        pick_devices("cuda:0", 8)
    with pytest.raises(ValueError, match="needs CUDA GPUs"):
        pick_devices("mps", 2)
    with pytest.raises(ValueError, match="all CUDA or all CPU"):
        WorkerPool(["cuda:0", "cpu"])


@pytest.fixture(scope="class")
def pool():
    if sys.platform == "win32" or not dist.is_gloo_available():
        pytest.skip("needs Linux and Gloo")
    pool = WorkerPool(["cpu", "cpu"], timeout=TIMEOUT)
    pool.start()
    yield pool
    pids = pool.pids()
    pool.stop()
    assert wait_gone(pids, 5.0)



class TestOneRunningPool:
    """Tests sharing one pool (each start costs seconds); it stops before the tests below start theirs."""

    def test_forward_equals_one_process_and_weights_are_sent_once(self, pool):
        model = tiny_dit(**CONFIG)
        assert pool.sync_weights(model, CONFIG, "v1")
        assert not pool.sync_weights(model, CONFIG, "v1")  # same version: nothing sent
        x, ctx = inputs()
        out = pool.forward(model, x, torch.tensor([500.0]), ctx)
        with torch.no_grad():
            want = model(x, torch.tensor([500.0]), ctx)
        assert_same(out, want)


    def test_changed_weights_are_resent(self, pool):
        """A LoRA patch changes rank 0's weights in place; a new version sends them again."""
        model = tiny_dit(**CONFIG)
        pool.sync_weights(model, CONFIG, "base")
        with torch.no_grad():
            for block in model.blocks:
                block.attn.qkv.weight.add_(0.05 * torch.randn_like(block.attn.qkv.weight))
        x, ctx = inputs()
        assert pool.sync_weights(model, CONFIG, "base+lora")
        out = pool.forward(model, x, torch.tensor([500.0]), ctx)
        with torch.no_grad():
            want = model(x, torch.tensor([500.0]), ctx)
        assert_same(out, want)


    def test_inputs_of_any_layout_are_sent(self, pool):
        """Samplers pass expanded (stride 0) timesteps and views; they must arrive as values."""
        model = tiny_dit(**CONFIG)
        pool.sync_weights(model, CONFIG, "layout")
        x, ctx = inputs()
        timestep = torch.tensor(500.0).expand(1)
        context = ctx.transpose(1, 2).contiguous().transpose(1, 2)  # same values, strided
        with torch.no_grad():
            want = model(x, timestep, ctx)
        assert_same(pool.forward(model, x, timestep, context), want)

    def test_fp8_and_bf16_weights_arrive_bit_for_bit(self, pool):
        """Weights go as bytes (NCCL and Gloo lack fp8): an fp8/bf16 checkpoint on cast ops."""
        model = tiny_dit(**CONFIG, operations=cast_ops)
        state = {k: v.to(torch.float8_e4m3fn if k.endswith("qkv.weight") else torch.bfloat16)
                 for k, v in model.state_dict().items()}
        model.load_state_dict(state, assign=True)
        assert pool.sync_weights(model, CONFIG, "fp8")
        x, ctx = inputs()
        with torch.no_grad():
            want = model(x, torch.tensor([500.0]), ctx)
        assert_same(pool.forward(model, x, torch.tensor([500.0]), ctx), want)

    def test_scaled_fp8_file_with_and_without_lora_equals_one_process(self, pool, tmp_path):
        """Kijai's scaled fp8 file: fp8 weights with per-row ``scale_weight`` tensors, built by
        the workers as by the loader (they used to refuse the scales); then a LoRA merged into
        rank 0's weights in place (re-quantized with the same scales), as ComfyUI patches them."""
        kijai_sd, _ = to_kijai_scaled_fp8(random_state(3, hidden_size=128, num_heads=4))
        path = tmp_path / "LongCat_fp8_e4m3fn_scaled_KJ.safetensors"
        save_file({k: v.contiguous() for k, v in kijai_sd.items()}, str(path))
        model = weights.load_dit(path)
        config = {**weights.inspect_checkpoint(path)[1], "text_tokens_zero_pad": True}
        assert model.blocks[0].attn.qkv.weight.dtype == torch.float8_e4m3fn
        assert model.blocks[0].attn.qkv.scale_weight.shape == (3 * 128,)
        x, ctx = inputs()
        assert pool.sync_weights(model, config, "scaled fp8")
        with torch.no_grad():
            want = model(x, torch.tensor([500.0]), ctx)
        assert_same(pool.forward(model, x, torch.tensor([500.0]), ctx), want)

        state = model.state_dict()
        shapes = {k: tuple(v.shape) for k, v in state.items() if v.ndim == 2}
        lora_sd, _ = kijai_lora(shapes, ["blocks.0.self_attn.k", "blocks.1.ffn.w1"], alphas={"blocks.1.ffn.w1": 8.0})
        merged = merge_lora(state, parse_lora(lora_sd, shapes), strength=0.8)
        with torch.no_grad():
            for key in ("blocks.0.attn.qkv.weight", "blocks.1.ffn.w1.weight"):
                model.get_parameter(key).copy_(merged[key])
            with_lora = model(x, torch.tensor([500.0]), ctx)
        assert float((with_lora - want).abs().max()) > 1e-3  # the LoRA changed the output
        assert pool.sync_weights(model, config, "scaled fp8+lora")
        assert_same(pool.forward(model, x, torch.tensor([500.0]), ctx), with_lora)

    def test_sampling_loop_with_kv_cache_and_cancel(self, pool):
        """Continuation with the KV cache through the pool equals one process; a run cancelled by
        its callback (ComfyUI's Cancel) leaves the pool usable."""
        model = tiny_dit(**CONFIG)
        pool.sync_weights(model, CONFIG, "loop")
        g = torch.Generator().manual_seed(4)
        latents = torch.randn(1, 4, 5, 6, 10, generator=g)
        text = TextCondition(torch.randn(1, 6, 32, generator=g), torch.tensor([[1, 1, 1, 1, 0, 0]]))
        sigmas = torch.tensor([1.0, 0.6, 0.3, 0.0])

        def run(dit_fn, callback=None):
            return denoise(dit_fn, latents, sigmas, text, None, 1.0, num_cond_latents=2, use_kv_cache=True,
                           callback=callback)

        class Cancelled(Exception):
            pass

        def cancel_at_second_step(step, steps, preview=None):
            if step == 1:
                raise Cancelled

        with pytest.raises(Cancelled):
            run(pool_dit_fn(pool, model), cancel_at_second_step)
        assert pool.started
        with torch.no_grad():
            want = run(make_dit_fn(model))
        assert_same(run(pool_dit_fn(pool, model)), want)


    @pytest.mark.parametrize("where", ["blocks.0.attn.qkv", "blocks.1.attn.qkv", "blocks.1.attn.proj",
                                       "final_layer"])
    def test_rank0_leaving_a_forward_keeps_the_workers(self, pool, where):
        """Newer ComfyUI checks Cancel inside every layer: rank 0 then joins the forward's remaining
        collectives with zeros, so the workers finish it and stay; the error is rank 0's own."""
        model = tiny_dit(**CONFIG)
        pool.sync_weights(model, CONFIG, "leave")
        pids = pool.pids()

        class Cancelled(Exception):
            pass

        def cancel(module, args):
            raise Cancelled

        x, ctx = inputs(t=5)
        handle = model.get_submodule(where).register_forward_pre_hook(cancel)
        with pytest.raises(Cancelled):
            pool.forward(model, x, torch.tensor([500.0]), ctx, num_cond_latents=2, return_kv=True)
        handle.remove()
        assert pool.pids() == pids
        with torch.no_grad():
            want = model(x, torch.tensor([500.0]), ctx)
        assert_same(pool.forward(model, x, torch.tensor([500.0]), ctx), want)

    def test_cache_from_one_process_is_refused(self, pool):
        model = tiny_dit(**CONFIG)
        pool.sync_weights(model, CONFIG, "cache")
        x, ctx = inputs(t=5)
        with torch.no_grad():
            cache = model.build_kv_cache(x[:, :, :2])
        with pytest.raises(TypeError, match="built without multi-GPU"):
            pool.forward(model, x[:, :, 2:], torch.tensor([500.0]), ctx, num_cond_latents=2, kv_cache=cache)


    def test_messages_carry_plain_values_only(self, pool):
        """Workers import the pack under another name, so no pack object may be pickled to them."""
        model = tiny_dit(**CONFIG)
        with pytest.raises(TypeError, match="cannot be sent to a worker"):
            pool.sync_weights(model, {**CONFIG, "bsa": BSASettings()}, "bad")
        assert pool.started


def _mid_step(model, action):
    """Run ``action`` on rank 0 between its first and second DiT block (inside the forward)."""
    return model.blocks[1].register_forward_pre_hook(lambda module, args: action())


def test_worker_killed_mid_step_gives_a_clear_error_and_leaves_nothing():
    pool = WorkerPool(["cpu", "cpu", "cpu"], timeout=TIMEOUT)
    pool.start()
    pids = pool.pids()
    config = {**TINY, "hidden_size": 96, "num_heads": 3}  # three ranks: the healthy worker must go too
    model = tiny_dit(**config)
    pool.sync_weights(model, config, "v")
    _mid_step(model, lambda: os.kill(pids[-1], signal.SIGKILL))
    x, ctx = inputs()
    start = time.monotonic()
    with pytest.raises(WorkerError, match=f"worker rank 2 \\(cpu, pid {pids[-1]}\\) was killed by signal 9"):
        pool.forward(model, x, torch.tensor([500.0]), ctx)
    assert time.monotonic() - start < 5.0  # noticed at once, not after the 60 s timeout
    assert not pool.started and not dist.is_initialized()
    assert wait_gone(pids, 5.0)


def test_hung_worker_gives_a_clear_error_after_the_timeout_and_leaves_nothing():
    pool = WorkerPool(["cpu", "cpu"], timeout=3.0)
    pool.start()
    pids = pool.pids()
    model = tiny_dit(**CONFIG)
    pool.sync_weights(model, CONFIG, "v")
    _mid_step(model, lambda: os.kill(pids[0], signal.SIGSTOP))
    x, ctx = inputs()
    start = time.monotonic()
    with pytest.raises(WorkerError, match=f"rank 0 stopped with .*Timed out.*; worker rank 1 \\(cpu, pid {pids[0]}\\) had not finished"):
        pool.forward(model, x, torch.tensor([500.0]), ctx)
    assert time.monotonic() - start < 3.0 + 5.0  # the collective timeout, then a short grace
    assert not pool.started and not dist.is_initialized()
    assert wait_gone(pids, 5.0)  # a stopped process is killed too


def test_garbage_collected_pool_stops_its_workers():
    pool = WorkerPool(["cpu", "cpu"], timeout=TIMEOUT)
    pool.start()
    pids = pool.pids()
    del pool
    gc.collect()
    assert wait_gone(pids, 10.0)
    assert not dist.is_initialized()


@pytest.mark.parametrize("how", ["exits", "is_killed"])
def test_workers_end_with_rank0(tmp_path, how):
    """ComfyUI exits (the pool's exit hook stops the workers) or is killed hard (nothing stops
    them but their own watch on the parent): either way no worker is left."""
    script = tmp_path / "rank0.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        import _standalone
        _standalone.import_pack()
        from longcat_pack.longcat.parallel.pool import WorkerPool
        pool = WorkerPool(["cpu", "cpu"], timeout=60)
        pool.start()
        print(*pool.pids(), flush=True)
        sys.stdin.readline()  # until the test says so; then exit without stopping the pool
    """))
    rank0 = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        pids = [int(p) for p in rank0.stdout.readline().split()]
        assert pids and all(running(pid) for pid in pids)
        if how == "exits":
            rank0.stdin.write("\n")
            rank0.stdin.flush()
            assert rank0.wait(30) == 0
        else:
            rank0.kill()
            rank0.wait()
        assert wait_gone(pids, 10.0)
    finally:
        if rank0.poll() is None:
            rank0.kill()
            rank0.wait()
