"""Start a headless ComfyUI with this pack and talk to it (tests and scripts, no pytest).

Used by ``tests/comfyui/conftest.py`` (the ``comfy_server`` fixture, CPU),
``scripts/record_object_info.py``, ``test_gpu_server.py`` and ``bench/bench_comfyui_vram.py``
(GPU). ComfyUI runs from ``COMFYUI_DIR`` with the Python given by ``COMFY_PYTHON`` (default:
the current interpreter, which must have ComfyUI's requirements).
Everything it writes goes under a throw-away ``--base-directory``.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[1]
PACK_FOLDER = "ComfyUI-LongCat-Video"
# Combo inputs of our nodes that list model files; normalized to [] when snapshots are compared.
FILE_INPUTS = {"LongCatModelLoader": ("model_name",), "LongCatLoRA": ("lora_name",),
               "LongCatAvatarModelLoader": ("model_name",)}
# ComfyUI options of the CPU test server (more can follow ``args``; a GPU server passes its own).
CPU_ARGS = ("--cpu", "--preview-method", "auto")


def comfy_python() -> str:
    """The Python that runs ComfyUI and its helper scripts: ``COMFY_PYTHON`` or this one."""
    return os.environ.get("COMFY_PYTHON") or sys.executable


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ComfyServer:
    """A running ComfyUI: ``url``, ``base_dir``, ``log_path``; HTTP helpers for the API."""

    def __init__(self, comfyui_dir, base_dir, extra_env=None, python=None, args=CPU_ARGS,
                 log_path=None):
        self.comfyui_dir = Path(comfyui_dir)
        self.base_dir = Path(base_dir)
        self.args = list(args)
        self.log_path = Path(log_path) if log_path else self.base_dir / "comfyui.log"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.python = python or comfy_python()
        self.env = {**os.environ, **(extra_env or {})}
        self.proc = None

    def link_pack(self) -> None:
        nodes_dir = self.base_dir / "custom_nodes"
        nodes_dir.mkdir(parents=True, exist_ok=True)
        link = nodes_dir / PACK_FOLDER
        if not link.exists():
            link.symlink_to(PACK_ROOT, target_is_directory=True)

    def start(self, timeout: float = 300.0) -> "ComfyServer":
        self.link_pack()
        cmd = [self.python, "main.py", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(self.base_dir), "--database-url", "sqlite:///:memory:",
               "--disable-auto-launch", *self.args]
        with open(self.log_path, "w") as log:  # the child keeps its own handle
            self.proc = subprocess.Popen(cmd, cwd=self.comfyui_dir, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI from {self.comfyui_dir} ({self.python}) exited during "
                                   f"start-up (code {self.proc.returncode}):\n{self.log_tail()}")
            try:
                self.get("/object_info/KSampler")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(1.0)
        self.stop()
        raise RuntimeError(f"ComfyUI from {self.comfyui_dir} did not answer at {self.url} within "
                           f"{timeout}s:\n{self.log_tail()}")

    def stop(self, grace: float = 30.0) -> None:
        """Terminate the server (by its PID), killing it after ``grace`` seconds."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> "ComfyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def get(self, path: str):
        try:
            with urllib.request.urlopen(self.url + path, timeout=60) as response:
                return json.load(response)
        except urllib.error.HTTPError:
            raise
        except urllib.error.URLError as err:
            raise ConnectionError(f"ComfyUI server {self.url} (from {self.comfyui_dir}) cannot be "
                                  f"reached: {err.reason}") from err

    def post(self, path: str, body: dict):
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                text = response.read()
                return response.status, (json.loads(text) if text else None)
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def queue_prompt(self, prompt: dict) -> str:
        """POST an API-format prompt; raises AssertionError with ComfyUI's errors if rejected."""
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": "longcat-tests"})
        # ComfyUI runs the valid outputs of a partly invalid prompt and lists the rest in
        # node_errors: a test must not pass on the part that ran.
        if status != 200 or body.get("node_errors"):
            raise AssertionError(f"/prompt rejected ({status}): {json.dumps(body, indent=1)}")
        return body["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 600.0) -> dict:
        """History entry of ``prompt_id`` once it finished (success or error)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            entry = history.get(prompt_id)
            status = (entry or {}).get("status", {})
            if status.get("completed") is not None and status.get("status_str") in ("success", "error"):
                return entry
            time.sleep(0.5)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout}s:\n{self.log_tail()}")

    def run(self, prompt: dict, timeout: float = 600.0) -> dict:
        """Queue ``prompt``, wait, and assert it succeeded; returns the history entry."""
        entry = self.wait(self.queue_prompt(prompt), timeout)
        status = entry["status"]
        if status.get("status_str") != "success":
            raise AssertionError(f"prompt failed: {json.dumps(status.get('messages'), indent=1)}"
                                 f"\n{self.log_tail()}")
        return entry


def our_node_info(object_info: dict) -> dict:
    """The pack's entries of ``/object_info`` (test-only nodes excluded), file lists emptied."""
    ours = {}
    for name, info in object_info.items():
        if not name.startswith("LongCat") or info.get("category", "").startswith("LongCat/testing"):
            continue
        info = json.loads(json.dumps(info))
        for field in FILE_INPUTS.get(name, ()):
            spec = info["input"]["required"][field]
            if isinstance(spec[0], list):
                spec[0] = []
            else:
                spec[1]["options"] = []
        ours[name] = info
    return ours


def worker_pids(parent_pid: int | None = None) -> list[int]:
    """Live LongCat multi-GPU worker processes (all, or those whose parent is ``parent_pid``;
    Linux /proc). The mark matches the pack under any import name."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if fields[0] != "Z" and b"parallel.worker" in cmdline and parent_pid in (None, int(fields[1])):
            found.append(int(stat.parent.name))
    return sorted(found)
