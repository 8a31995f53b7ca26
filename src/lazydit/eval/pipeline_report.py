"""Time, verdicts, table and figures of the pipeline harness (`pipeline_compare`).

Time is a first-class axis: every row is timed at each batch of `timing_batches` (1: latency, 16:
throughput) as a ratio to full compute within interleaved rounds after a warm-up. A verdict is
given at matched FLOPs (rivals with at least the default's FLOPs) and at matched measured time
(rivals no slower than the default at that batch, fewer steps included), on both the mean
per-image PSNR (with a paired bootstrap interval) and the pooled PSNR.
"""
from __future__ import annotations

import os
import time

from ..metrics import bootstrap_ci
from ..rivals.pipeline_hooks import attached
from .timing import time_cell

TIME_SLACK = 0.02  # a rival up to this much slower than the default still counts as matched in time


def time_methods(pipe, cfg, prompts, call_kwargs, n, runs, rows) -> None:
    """rows[i]["time_b<B>"] (median ratio to full compute) and "time_b<B>_range" ([min, max] over the
    rounds) for each B in cfg.timing_batches: one pipe(...) call of B images per timed run."""
    from ..integrations.diffusers.fit import pipeline_sampler
    for batch in cfg.timing_batches:
        seeds = [cfg.eval_seed + i for i in range(batch)]
        plain = pipeline_sampler(pipe, prompts, n, call_kwargs, chunk=batch)

        def once(name):
            run = runs.get(name)
            t0 = time.perf_counter()
            if run is None:
                plain(seeds)
            elif run["apply"] is None:
                pipeline_sampler(pipe, prompts, run["steps"], call_kwargs, chunk=batch)(seeds)
            else:
                attached(pipe, run["apply"], lambda: plain(seeds))
            return time.perf_counter() - t0
        timed = [r for r in rows if not r.get("reference")]
        for name in [None] + [r["method"] for r in timed]:  # warm-up
            once(name)
        ratios = {r["method"]: [] for r in timed}
        for _ in range(cfg.timing_rounds):
            base = once(None)
            for name in ratios:
                ratios[name].append(once(name) / base)
        for r in rows:
            v = sorted(ratios.get(r["method"], [1.0]))  # the reference is full compute itself
            r[f"time_b{batch}"] = v[len(v) // 2]
            r[f"time_b{batch}_range"] = [v[0], v[-1]]


def matched_time_steps(group: list, n: int) -> list[dict]:
    """The fewer-steps rival at the default's measured time at each batch, where no row has it yet:
    [{"steps": k}], k the most steps whose share k/n is within the default's time ratio."""
    lazy = next((r for r in group if r["method"] == "lazy"), None)
    if lazy is None:
        return []
    have = {r["method"] for r in group}
    out = []
    for key in sorted(k for k in lazy if k.startswith("time_b") and not k.endswith("_range")):
        k = max(1, min(n, int(n * lazy[key] + 1e-9)))
        if f"steps-{k}" not in have and k < n:
            have.add(f"steps-{k}")
            out.append({"steps": k})
    return out


def verdicts(rows: list, resamples: int, batches) -> list:
    """Per setting and per match (FLOPs, then time at each batch): the default against the best
    rival by mean PSNR (paired bootstrap interval of the per-image difference) and against the best
    by pooled PSNR."""
    out = []
    for n, target in sorted({(r["steps"], r["target"]) for r in rows}):
        group = [r for r in rows if r["steps"] == n and r["target"] == target and "psnr" in r]
        lazy = next((r for r in group if r["method"] == "lazy"), None)
        if lazy is None:
            continue
        others = [r for r in group if r is not lazy and not r.get("reference")]
        # at matched FLOPs, the fewer-steps rows added for matched time would only add compute
        matches = [("flops", [r for r in others if r["flops_vs_full"] >= lazy["flops_vs_full"] - 1e-9
                              and not r.get("matched_time")])]
        for b in batches:
            key = f"time_b{b}"
            if key in lazy:
                matches.append((f"time b{b}", [r for r in others if r.get(key, float("inf")) <= lazy[key] + TIME_SLACK]))
        for match, rivals in matches:
            if not rivals:
                continue
            best = max(rivals, key=lambda r: r["psnr"])
            pooled = max(rivals, key=lambda r: r["psnr_pooled"])
            diff = lazy["_per_image"] - best["_per_image"]
            lo, hi = bootstrap_ci(diff, resamples)
            gain, pooled_gain = float(diff.mean()), lazy["psnr_pooled"] - pooled["psnr_pooled"]
            out.append({"steps": n, "target": target, "match": match, "best_rival": best["method"],
                        "gain_db": gain, "gain_ci95": [lo, hi], "best_pooled_rival": pooled["method"],
                        "pooled_gain_db": pooled_gain, "wins": bool(lo > 0 and pooled_gain > 0)})
    return out


def _family(method: str) -> str:
    if method == "lazy":
        return "lazy (default)"
    if method.startswith("steps-"):
        return "fewer steps"
    if method in ("FORA", "TaylorSeer2"):
        return "static"
    return "diffusers hook"


def plot_pipeline(rows: list, out_dir: str, with_fd: bool, batches) -> None:
    """quality-vs-flops.png and quality-vs-time-b<B>.png: one panel per step count."""
    from ..metrics.plots import plot_quality
    pts = [{**r, "method": f"{r['method']}@{r['target']:.0%}", "family": _family(r["method"]), "group": r["steps"]}
           for r in rows if "psnr" in r and not r.get("reference")]
    if not pts:
        return
    plot_quality(pts, os.path.join(out_dir, "quality-vs-flops.png"), with_fd, x="flops_vs_full",
                 x_label="FLOPs relative to full compute", reference="full")
    for b in batches:
        if all(f"time_b{b}" in r for r in pts):
            plot_quality(pts, os.path.join(out_dir, f"quality-vs-time-b{b}.png"), with_fd, x=f"time_b{b}",
                         x_label=f"time relative to full compute (batch {b})", reference="full")


def format_pipeline_table(result: dict) -> str:
    batches = result["config"]["timing_batches"]
    fd = result["config"]["fd"]
    head = ["N", "R", "method", "FLOPs", *(f"time b{b}" for b in batches), "PSNR", "pooled",
            *(("FD", "KID", "class acc") if fd else ())]
    lines = [f"{result['family']}: PSNR against full compute (mean per image [95% CI], pooled), FLOPs and time "
             f"as fractions of full compute", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        if "not_applicable" in r:
            lines.append(f"| {r['steps']} | {r['target']} | {r['method']} | not applicable: {r['not_applicable']} |")
            continue
        lo, hi = r["psnr_ci95"]
        cells = [str(r["steps"]), str(r["target"]), r["method"], f"{r['flops_vs_full']:.3f}",
                 *(time_cell(r, b) for b in batches),
                 f"{r['psnr']:.2f} [{lo:.2f}, {hi:.2f}]" if not r.get("reference") else "(reference)",
                 f"{r['psnr_pooled']:.2f}" if not r.get("reference") else "-"]
        if fd:
            cells += [f"{r['FD-EffNetLite0']:.1f}", f"{r['KID-EffNetLite0']:.4f}", f"{r['class_acc']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    for v in result["verdicts"]:
        lo, hi = v["gain_ci95"]
        lines.append(f"N={v['steps']} R={v['target']} at matched {v['match']}: lazy vs {v['best_rival']} "
                     f"{v['gain_db']:+.2f} dB [{lo:+.2f}, {hi:+.2f}]; pooled vs {v['best_pooled_rival']} "
                     f"{v['pooled_gain_db']:+.2f} dB -> {'wins' if v['wins'] else 'does not win'}")
    return "\n".join(lines)
