"""The VRAM bench's results: latent comparisons, the printed table, the collected server logs."""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file


def collect_latents(rec: dict) -> dict:
    """{"stage/node": fp32 tensor} of a case's returned stages (480p latents)."""
    out = {}
    for stage in rec.get("stages", []):
        for node, path in (stage.get("outputs") or {}).get("latents", {}).items():
            if Path(path).is_file():
                out[f"{stage['stage']}/{node}"] = load_file(path)["latent_tensor"].float()
    return out


def compare(latents: dict, cases: dict) -> list:
    """Relative L2 difference of each case's latents to the bf16 run of the same stage node, and
    of a ``--fast`` case to the same weights without ``--fast``."""
    rows = []
    keys = {k for per_case in latents.values() for k in per_case}
    for key in sorted(keys):
        have = [c for c in latents if key in latents[c]]
        ref = next((c for c in have if cases[c]["dit"] == "bf16" and not cases[c]["fast"]), None)
        for name in have:
            refs = [ref] if ref and ref != name else []
            if cases[name]["fast"]:
                refs += [c for c in have if not cases[c]["fast"] and c != ref
                         and (cases[c]["dit"], cases[c]["budget_gib"], cases[c]["lowvram"])
                         == (cases[name]["dit"], cases[name]["budget_gib"], cases[name]["lowvram"])]
            for other in refs:
                a, b = latents[name][key], latents[other][key]
                rows.append({"latent": key, "case": name, "reference": other,
                             "rel_l2": (a - b).norm().item() / max(b.norm().item(), 1e-30),
                             "max_abs": (a - b).abs().max().item(),
                             "finite": bool(torch.isfinite(a).all())})
    return rows


def _fmt(value, spec=".2f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(results: dict) -> None:
    print(f"\n{'case':24} {'stage':12} {'status':9} {'steps':>5} {'s/step':>7} {'1st':>6} "
          f"{'after':>6} {'decode':>6} {'torchG':>7} {'procG':>6} {'ramG':>6} {'DiT':8}")
    for name, case in results["cases"].items():
        for st in case.get("stages", []):
            timing, vram = st.get("timing", {}), st.get("vram", {})
            peak = st.get("monitor_peak_gib", {})
            dit = {True: "partial", False: "full"}.get(st.get("dit_partially_loaded"), "-")
            print(f"{name:24} {st['stage']:12} {st.get('status', '?'):9} "
                  f"{timing.get('steps_done', 0):>5} {_fmt(timing.get('s_per_step')):>7} "
                  f"{_fmt(timing.get('first_step_s'), '.1f'):>6} "
                  f"{_fmt(timing.get('after_last_step_s'), '.1f'):>6} {_fmt(st.get('vae_decode_s'), '.1f'):>6} "
                  f"{_fmt(vram.get('max_allocated')):>7} {_fmt(peak.get('gpu_process_used')):>6} "
                  f"{_fmt(peak.get('rss_anon')):>6} {dit:8}")
            if st.get("error"):
                err = st["error"]
                text = err if isinstance(err, str) else f"{err.get('exception_type')}: {err.get('exception_message')}"
                print(f"{'':24}   error: {str(text).strip().splitlines()[0][:150] if str(text).strip() else ''}")
        if case.get("error"):
            print(f"{name:24} case error: {case['error'][:200]}")
    for row in results.get("comparisons", []):
        print(f"latent {row['latent']:20} {row['case']:24} vs {row['reference']:24} rel L2 "
              f"{row['rel_l2']:.4f} max|d| {row['max_abs']:.3g} finite {row['finite']}")


def write_logs(out: Path, work: Path, names) -> None:
    """All server logs in one file, runs of identical lines collapsed (the fp8 fallback repeats)."""
    with open(out / "server_logs.txt", "w") as dst:
        for name in names:
            path = work / "logs" / f"{name}.log"
            if not path.exists():
                continue
            dst.write(f"\n===== {name} =====\n")
            previous, repeats = None, 0
            for line in path.read_text(errors="replace").splitlines():
                if line == previous:
                    repeats += 1
                    continue
                if repeats:
                    dst.write(f"[previous line repeated {repeats} more times]\n")
                dst.write(line + "\n")
                previous, repeats = line, 0
            if repeats:
                dst.write(f"[previous line repeated {repeats} more times]\n")


def compare_dirs(dirs) -> dict:
    """``--compare``: latents returned by several runs (their ``latents_*.safetensors``)."""
    cases, latents = {}, {}
    for folder in map(Path, dirs):
        results = json.loads((folder / "comfyui_vram.json").read_text())
        for name, rec in results["cases"].items():
            file = folder / f"latents_{name}.safetensors"
            if file.is_file() and "dit" in rec:
                cases[name] = rec
                latents[name] = {k: v.float() for k, v in load_file(str(file)).items()}
    return {"cases": {}, "comparisons": compare(latents, cases)}


