"""The README's VRAM table and the workflows' VRAM notes, read from the real-ComfyUI bench results.

``bench/bench_comfyui_vram.py`` writes ``bench/results/comfyui_vram_<card>_<date>_*.json``
(cases → ``budget_gib`` → stages → ``status``, ``timing.s_per_step``, ``vram.max_allocated``,
``error``). This module reads the newest set (or the files given), keeps per card class (budget)
and stage the best measured cell (a success over a failure, then the lower s/step), and renders:

* ``markdown_table()``: one row per card class with what to set and, per stage, "runs: s/step,
  peak" or what failed and why (our one-line out-of-memory message names the fix);
* ``note(stages)``: the VRAM paragraph of a workflow's note, one line per card class.

    python scripts/vram_results.py [files...]        # print the table and the notes

``scripts/workflow_parts.py`` takes the workflows' VRAM paragraphs from ``measured_notes()`` once
results of the current bench (ComfyUI 0.33) are the newest in ``bench/results``; the README
table is pasted from ``python scripts/vram_results.py``.
"""

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
STAGE_TITLES = {"distill": "480p distilled (16 steps, batch 1)", "cfg480": "480p 50 steps with CFG (batch 2)",
                "refine": "refine 720p with BSA", "continuation": "continuation with KV cache"}
CARD_CLASSES = {12: "12 GB (RTX 3060 / 4070)", 16: "16 GB (RTX 4060 Ti / 4080)",
                24: "24 GB (RTX 3090 / 4090)", 48: "48 GB (RTX 6000 Ada, L40S)", 80: "80 GB (A100 / H100)"}


@dataclass(frozen=True)
class Cell:
    budget_gib: float
    stage: str
    case: str
    dit: str
    status: str
    s_per_step: float | None
    peak_gib: float | None
    partial: bool | None
    error: str | None
    comfyui: str | None
    gpu: str | None
    options: tuple


def latest_files(results: Path = RESULTS) -> list[Path]:
    """The result files of the newest bench date (all runs of that card and date)."""
    files = sorted(results.glob("comfyui_vram_*_*_run*.json"))
    if not files:
        return []
    dates = {re.search(r"_(\d{4}-\d{2}-\d{2})_", f.name).group(1) for f in files}
    newest = max(dates)
    return [f for f in files if f"_{newest}_" in f.name]


def load(files) -> list[Cell]:
    cells = []
    for path in files:
        data = json.loads(Path(path).read_text())
        env = data.get("environment", {})
        for name, case in data.get("cases", {}).items():
            for stage in case.get("stages", []):
                error = stage.get("error")
                if isinstance(error, dict):
                    error = (error.get("exception_message") or error.get("exception_type") or "").splitlines()
                    error = error[0] if error else None
                cells.append(Cell(
                    budget_gib=case.get("budget_gib"), stage=stage["stage"], case=name, dit=case.get("dit"),
                    status=stage["status"], s_per_step=(stage.get("timing") or {}).get("s_per_step"),
                    peak_gib=(stage.get("vram") or {}).get("max_allocated"),
                    partial=stage.get("dit_partially_loaded"), error=error, comfyui=env.get("comfyui"),
                    gpu=env.get("gpu"), options=tuple(case.get("server_options") or ())))
    return cells


def best(cells, budget, stage) -> Cell | None:
    """The cell a user of that card should follow: a success (fastest), else the failure."""
    mine = [c for c in cells if c.budget_gib == budget and c.stage == stage and c.status != "skipped"]
    if not mine:
        return None
    ok = [c for c in mine if c.status == "success" and c.s_per_step]
    if ok:
        return min(ok, key=lambda c: c.s_per_step)
    return mine[0]


def _flags(cell: Cell) -> str:
    flags = [o for o in cell.options if o in ("--lowvram", "--fast", "fp8_matrix_mult")]
    return ("fp8" if cell.dit == "fp8" else "bf16") + ("".join(f" {f}" for f in flags))


def describe(cell: Cell | None) -> str:
    if cell is None:
        return "not measured"
    if cell.status == "success":
        offload = ", DiT partly offloaded" if cell.partial else ""
        return f"runs ({_flags(cell)}): {cell.s_per_step:.1f} s/step, peak {cell.peak_gib:.1f} GiB{offload}"
    if cell.error and "out of memory" in cell.error.lower():
        return f"**out of memory** ({_flags(cell)}): {cell.error}"
    return f"**{cell.status}** ({_flags(cell)}): {cell.error or 'no message'}"


def markdown_table(cells, stages=tuple(STAGE_TITLES)) -> str:
    budgets = sorted({c.budget_gib for c in cells})
    lines = ["| card | " + " | ".join(STAGE_TITLES[s] for s in stages) + " |",
             "| --- |" + " --- |" * len(stages)]
    for budget in budgets:
        card = CARD_CLASSES.get(int(budget), f"{budget:g} GB")
        lines.append(f"| {card} | " + " | ".join(describe(best(cells, budget, s)) for s in stages) + " |")
    return "\n".join(lines)


def note(cells, stages) -> str:
    """VRAM lines for a workflow note: per card class, each of the workflow's stages."""
    sources = sorted({(c.comfyui, c.gpu) for c in cells})
    head = ", ".join(f"ComfyUI {v} on an {g}" for v, g in sources)
    lines = [f"**VRAM** (measured inside {head} held to each budget, random weights: "
             "`bench/bench_comfyui_vram.py`):"]
    for budget in sorted({c.budget_gib for c in cells}):
        parts = [f"{STAGE_TITLES[s].split(' (')[0]} {describe(best(cells, budget, s))}" for s in stages]
        lines.append(f"* {CARD_CLASSES.get(int(budget), f'{budget:g} GB')}: " + "; ".join(parts))
    return "\n".join(lines)


def measured_notes(min_comfyui: tuple = (0, 33), files=None) -> dict | None:
    """The workflows' VRAM paragraphs ("480p", "720p", "continuation") from the newest results,
    or None while those come from a ComfyUI older than ``min_comfyui`` (the hand-written notes
    of the earlier bench stay until the current bench has been run)."""
    cells = load(files or latest_files())
    versions = {tuple(int(p) for p in c.comfyui.split(".")[:2]) for c in cells if c.comfyui}
    if not cells or not versions or min(versions) < min_comfyui:
        return None
    return {"480p": note(cells, ("distill", "cfg480")), "720p": note(cells, ("refine",)),
            "continuation": note(cells, ("continuation",))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="result files (default: the newest set)")
    args = parser.parse_args(argv)
    files = args.files or latest_files()
    if not files:
        print("no bench/results/comfyui_vram_*_run*.json", file=sys.stderr)
        return 1
    cells = load(files)
    print(markdown_table(cells))
    print()
    for stages in (("distill", "cfg480"), ("refine",), ("continuation",)):
        print(note(cells, stages))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
