"""Time as an axis of the DiT harness (`compare`, `frontier`, `demo`): every method is timed at a
batch of 1 (latency) and at `--timing-images` (throughput), as a ratio to its group's full-compute
time in the same round; and the fewer-steps rival is also placed at the default's measured time.

One warm-up round runs every method's code paths; then `timing_rounds` rounds, each timing every
batch size over every method in an order rotated per round, so that drift on a shared machine
hits every method alike. The median ratio is reported with its [min, max] over rounds.
"""
from __future__ import annotations

import time

from ..core.lazy import remove_lazy
from ..pipeline import generate
from ..rivals.methods import DEFAULT, Method, configure


def time_cell(row: dict, batch: int) -> str:
    """A table cell of a row's time ratio at `batch`: the median and its range over the rounds."""
    med, rng = row.get(f"time_b{batch}", float("nan")), row.get(f"time_b{batch}_range")
    return f"{med:.2f}" if not rng or rng[0] == rng[1] else f"{med:.2f} ({rng[0]:.2f}-{rng[1]:.2f})"


def timing_batches(timing_images: int) -> tuple:
    return tuple(sorted({1, timing_images}))


def time_methods(model, cfg, methods: list, num_classes: int, batches: tuple) -> dict:
    """(name, group) -> {"time_b<B>": median ratio, "time_b<B>_range": [min, max] for each batch B,
    "time_ratio" and "sec_per_image" at the largest batch}."""
    most = max(max(batches), cfg.warmup_images or 0)
    labels = [i % num_classes for i in range(most)]
    seeds = [cfg.eval_seed + i for i in range(most)]

    def once(m: Method, n: int) -> float:
        net = configure(model, m)
        t0 = time.perf_counter()
        generate(net, labels[:n], seeds[:n], steps=m.steps, cfg_scale=cfg.cfg_scale)
        return time.perf_counter() - t0

    for m in methods:  # warm-up: unrecorded
        once(m, cfg.warmup_images or max(batches))
    per_round = []
    for r in range(cfg.timing_rounds):
        order = methods[(r + 1) % len(methods):] + methods[:(r + 1) % len(methods)]
        per_round.append({(m.name, m.group, b): once(m, b) for b in batches for m in order})
    remove_lazy(model)
    out = {}
    for m in methods:
        entry = {}
        for b in batches:
            ratios = sorted(s[m.name, m.group, b] / s[f"DDIM-{m.group}", m.group, b] for s in per_round)
            entry[f"time_b{b}"] = ratios[len(ratios) // 2]
            entry[f"time_b{b}_range"] = [ratios[0], ratios[-1]]
        big = max(batches)
        secs = sorted(s[m.name, m.group, big] for s in per_round)
        entry.update(time_ratio=entry[f"time_b{big}"], sec_per_image=secs[len(secs) // 2] / big)
        out[m.name, m.group] = entry
    return out


def matched_time_ddim(methods: list, timing: dict, batches: tuple) -> list:
    """DDIM-k rows, k the most steps whose share k/N is within a default row's measured time at
    some batch, where the group has no DDIM-k yet."""
    have = {(m.group, m.steps) for m in methods if m.kind == "full"}
    out = []
    for m in methods:
        if m.family != DEFAULT:
            continue
        for b in batches:
            k = max(1, int(m.group * timing[m.name, m.group][f"time_b{b}"] + 1e-9))
            if k < m.group and (m.group, k) not in have:
                have.add((m.group, k))
                out.append(Method(f"DDIM-{k}", m.group, k, "full", family="DDIM", extra={"matched_time": True}))
    return out
