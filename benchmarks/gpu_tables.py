"""Markdown tables from a ``gpu_throughput.py`` JSON: what README.md and benchmarks/README.md show.

    python benchmarks/gpu_tables.py benchmarks/results/gpu_throughput_h200.json

Every number printed comes from the JSON; a case the run skipped or could not finish is shown as such.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["render", "done_criteria"]

#: The goals of issue 20 (one H200, fp16, 512², K = 3, SD1.5 architecture).
GOALS = {"single_images_per_s": 100.0, "single_share_of_ceiling": 0.70, "single_latency_ms": 30.0,
         "per_class_images_per_s": 60.0, "max_abs_diff": 1e-2, "label_agreement": 0.999}  # fmt: skip


def _by_batch(cases: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {int(c["batch"]): c for c in cases or []}


def _best(cases: list[dict[str, Any]]) -> dict[str, Any] | None:
    ok = [c for c in cases or [] if "images_per_s" in c]
    return max(ok, key=lambda c: c["images_per_s"]) if ok else None


def _f(x: float | None, fmt: str = ".1f") -> str:
    return "–" if x is None else format(x, fmt)


def _params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def _share(engine: dict | None, ceil: dict | None, key: str) -> float | None:
    if not engine or not ceil or not ceil.get(key):
        return None
    return engine["images_per_s"] / ceil[key]


def done_criteria(report: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(goal, measured, met?) for each of the issue's goals; None = not measured."""
    sd = report.get("sd15") or {}
    ceil = _by_batch(sd.get("ceiling", []))
    single, per_class = _best(sd.get("single", [])), _best(sd.get("per_class", []))
    one = _by_batch(sd.get("single", [])).get(1)
    rows: list[tuple[str, str, bool | None]] = []
    g = GOALS
    rows.append((f"single-prompt mode >= {g['single_images_per_s']:.0f} images/s at its best batch",
                 f"{_f(single and single['images_per_s'])} (batch {single and single['batch']})",
                 None if not single else single["images_per_s"] >= g["single_images_per_s"]))  # fmt: skip
    share = _share(single, ceil.get(single["batch"]) if single else None, "images_per_s_single")
    rows.append((f">= {g['single_share_of_ceiling']:.0%} of the ceiling at that batch", _f(share and 100 * share, ".1f") + " %",
                 None if share is None else share >= g["single_share_of_ceiling"]))  # fmt: skip
    rows.append((f"single-prompt latency at batch 1 <= {g['single_latency_ms']:.0f} ms", f"{_f(one and one['latency_ms'])} ms",
                 None if not one else one["latency_ms"] <= g["single_latency_ms"]))  # fmt: skip
    rows.append((f"per-class engine >= {g['per_class_images_per_s']:.0f} images/s at its best batch",
                 f"{_f(per_class and per_class['images_per_s'])} (batch {per_class and per_class['batch']})",
                 None if not per_class else per_class["images_per_s"] >= g["per_class_images_per_s"]))  # fmt: skip
    checks = sd.get("check") or {}
    for mode in ("per_class", "single"):  # both rows always: a check skipped or failed reads "not measured"
        c = checks.get(mode)
        goal = f"maps vs CPU fp32 ({mode}): max abs <= {g['max_abs_diff']}, labels >= {g['label_agreement']}"
        if c:
            rows.append((goal, f"{c['max_abs_diff']:.1e}, {c['label_agreement']:.5f}", bool(c["pass"])))
        else:
            rows.append((goal, "–", None))
    return rows


def render(report: dict[str, Any]) -> str:
    """The markdown tables of one run."""
    env, sd = report.get("env", {}), report.get("sd15") or {}
    lines = [f"Device: {env.get('device_name')} ({env.get('device')}), torch {env.get('torch')}, "
             f"diffusers {env.get('diffusers')}; run {report.get('elapsed_s')} s"
             + ("" if report.get("finished") else " (**not finished**: partial results)"), ""]  # fmt: skip
    if not sd:
        lines += ["SD1.5 architecture: no result (see skipped and errors below)."]
    if sd:
        lines += [f"SD1.5 architecture, random weights, {sd.get('size')}², {sd.get('dtype')}, K = {sd.get('k')}, "
                  f"{sd.get('image', ['?', '?'])[1]}x{sd.get('image', ['?', '?'])[0]} images; images/s (share of the "
                  "VAE + UNet ceiling at the same batch); ms per call:", "",
                  "| batch | ceiling, single | single-prompt mode | ms/call | ceiling, per-class | per-class engine | ms/call |",
                  "| --: | --: | --: | --: | --: | --: | --: |"]  # fmt: skip
        ceil, single, pc = (_by_batch(sd.get(k, [])) for k in ("ceiling", "single", "per_class"))
        for b in sorted(set(ceil) | set(single) | set(pc)):
            c, s, p = ceil.get(b), single.get(b), pc.get(b)
            cs, cp = c and c["images_per_s_single"], c and c["images_per_s_per_class"]
            ss, sp = _share(s, c, "images_per_s_single"), _share(p, c, "images_per_s_per_class")
            lines.append(f"| {b} | {_f(cs)} | {_f(s and s['images_per_s'])} ({_f(ss and 100 * ss, '.0f')} %) | "
                         f"{_f(s and s['latency_ms'])} | {_f(cp)} | {_f(p and p['images_per_s'])} "
                         f"({_f(sp and 100 * sp, '.0f')} %) | {_f(p and p['latency_ms'])} |")  # fmt: skip
        if sd.get("options"):
            lines += [
                "",
                "| option | mode | batch | images/s | ms/call | first call s |",
                "| --- | --- | --: | --: | --: | --: |",
            ]
            for o in sd["options"]:
                lines.append(f"| {o['option']} | {o['mode']} | {o['batch']} | {_f(o['images_per_s'])} | "
                             f"{_f(o['latency_ms'])} | {_f(o.get('first_call_s'))} |")  # fmt: skip
        if sd.get("loader"):
            ld = sd["loader"]
            lines += ["", f"JPEG files decoded + segmented (single mode, batch {ld['batch']}, {ld['images']} images): "
                      f"{_f(ld['serial_images_per_s'])} images/s decoding in turn, {_f(ld['prefetch_images_per_s'])} "
                      f"prefetched; decoding alone {_f(ld['decode_only_images_per_s'])} images/s on one thread."]  # fmt: skip
        syncs = sd.get("syncs") or {}
        if any(syncs.values()):
            lines += ["", "Host syncs in one segment call at batch 1: " + "; ".join(
                f"{m} {v['total']} ({', '.join(f'{k} x{n}' for k, n in list(v['sites'].items())[:4])})"
                for m, v in syncs.items() if v)]  # fmt: skip
    lines += ["", "| goal (issue 20) | measured | met |", "| --- | --- | --- |"]
    for goal, got, met in done_criteria(report):
        lines.append(f"| {goal} | {got} | {'yes' if met else 'no' if met is False else 'not measured'} |")
    fams = report.get("families") or {}
    if fams:
        lines += ["", "| family | size | dtype (VAE) | denoiser params | batch 1: images/s, ms | best batch | images/s "
                  "| ceiling at that batch (share) |", "| --- | --: | --- | --: | --: | --: | --: | --: |"]  # fmt: skip
        for name, f in fams.items():
            one = _by_batch(f.get("per_class", [])).get(1)
            best = _best(f.get("per_class", []))
            c = _by_batch(f.get("ceiling", [])).get(best["batch"]) if best else None
            share = _share(best, c, "images_per_s_per_class")
            lines.append(f"| {name} | {f.get('size')}² | {f.get('dtype')} ({f.get('vae_dtype')}) | "
                         f"{_params(f.get('denoiser_params', 0))} | {_f(one and one['images_per_s'], '.2f')}, "
                         f"{_f(one and one['latency_ms'], '.0f')} | {best and best['batch']} | "
                         f"{_f(best and best['images_per_s'], '.2f')} | {_f(c and c['images_per_s_per_class'], '.2f')} "
                         f"({_f(share and 100 * share, '.0f')} %) |")  # fmt: skip
    for s in report.get("skipped", []):
        lines.append(f"- skipped: {s['case']} ({s['reason']})")
    for e in report.get("errors", []):
        lines.append(f"- error: {e['case']}: {e['error']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Markdown tables from a gpu_throughput.py JSON")
    ap.add_argument("json", type=Path)
    args = ap.parse_args(argv)
    print(render(json.loads(args.json.read_text(encoding="utf-8"))))


if __name__ == "__main__":
    main()
