"""One harness for every way of cutting compute: same model, same seeds and labels, one table.

Each setting (N steps, lazy target R) is a group compared against DDIM-N at full compute:
  lazy (the learned default policy) | L2C (input-independent mask averaged from the gates) |
  FORA (static copy) | TaylorSeer (static forecast, orders 1 and 2) | TeaCache-, FirstBlockCache-
  and forecast-gated training-free policies, their thresholds bisected on calibration seeds to the
  same ratio | diffusers' own hooks on the converted model, if installed (TaylorSeerCache;
  SeaCache, FirstBlockCache and MagCache with thresholds bisected to the lazy run's MACs;
  FasterCache's closest setting), their MACs counted from what really computed | DDIM-k with the
  fewest steps whose MACs are at least the lazy run's.

FORA, TaylorSeer and TaylorSeerCache skip the most whole steps whose MACs stay at least the lazy
run's measured MACs, and their placement (even spread, warm-up then spread, warm-up then every-n;
TaylorSeerCache's warm-up and interval) is searched on the default policy's own selection images
with its effort (`rivals.placement`): a hand-placed rival against a searched default would credit
the search to the policy, and a rival with fewer MACs would be handicapped.

Evaluation seeds start at `eval_seed` (default 3,000,000, see `seeds`), disjoint from the seeds gate training
and calibration draw from. Quality runs once per method over all images; timing is a separate
phase with a warm-up round and interleaved rounds, reported as a ratio to full compute.
`lazydit demo` is this harness with defaults sized for 2 CPU cores.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import asdict, dataclass, field

import torch

from ..images import save_grid
from ..io import write_json
from ..core.lazy import get_controller, load_gates, remove_lazy
from ..metrics import bootstrap_ci, image_psnr
from ..metrics.macs import controller_costs, lazy_macs, module_macs
from ..core.models import EMBEDDED
from ..pipeline import generate
from ..rivals.diffusers_calibration import fit_hook
from ..rivals.diffusers_hooks import DIFFUSERS_HOOKS
from ..rivals.methods import (DEFAULT, OTHER_SEED, Method, calibrate_policy, configure, ddim_method, diffusers_methods,
                              l2c_method, searched_static_methods, searched_taylorseer_methods)
from ..train.gates import GateTrainConfig, train_gates
from .seeds import EVAL_SEED
from .timing import matched_time_ddim, time_cell, time_methods, timing_batches

POLICIES = (("TeaCache", "teacache"), ("FBCache", "fbcache"), ("FcGated", "fcgated"))


@dataclass
class CompareConfig:
    out_dir: str = "out/demo"
    model: str = EMBEDDED
    checkpoint: str | None = None
    settings: list = field(default_factory=lambda: [(50, 0.3), (50, 0.5), (50, 0.6), (20, 0.5)])  # (steps, target)
    n_samples: int = 64             # images per method (same seeds and labels for all)
    n_ref: int = 500                # real images for FD/KID (embedded model only)
    fd: bool = True                 # FD/KID and class accuracy (embedded model only); the demo's 16
                                    # images are too few for FD, so it skips them
    cfg_scale: float = 3.0
    seed: int = 0                   # gate training and calibration seed
    fit_seeds: int = 1              # the default policy is also fitted on seed + 1, ..., seed + fit_seeds - 1
                                    # and scored on the same images: the spread of its result over fits
    eval_seed: int = EVAL_SEED      # image i uses eval_seed + i: see `seeds`
    train_iters: int = 100          # gate-training iterations per setting
    train_batch: int = 8
    rollout_every: int = 64
    reuse: str = "taylor1"          # operator of the learned gates and the training-free policies
    gates_dir: str | None = None    # reuse gate files <dir>/gates-N-R.safetensors instead of training
    calib_images: int = 8           # calibration images for the training-free policies' thresholds
    calib_rounds: int = 10          # bisection rounds of each policy's threshold
    timing_images: int = 16         # the larger batch timed per method and round (a batch of 1 is timed too)
    timing_rounds: int = 2          # interleaved rounds after one warm-up round
    warmup_images: int | None = None  # batch of the warm-up round (None: timing_images); it only
                                    # runs every method's code paths once, so the demo warms on 1
    bootstrap: int = 1000           # resamples for the 95% interval of the mean PSNR
    train_calib: int = 32           # images the default policy calibrates on (placement search: half fit, half select;
                                    # its input correction fits on as many)
    schedule_candidates: int = 12   # placements the placement search tries
    only: list | None = None        # the default policy against just the static/diffusers rivals named so
    diffusers_hooks: list | None = None  # diffusers' hooks to run (without --only); None: all five. The demo
                                    # runs only TaylorSeerCache: its 10 minutes on 2 cores cannot also fit
                                    # the threshold hooks to the budget
    gates_too: bool = False         # also train input-dependent on-policy gates (and their L2C mask)
    threads: int | None = None


def run_compare(cfg: CompareConfig, model) -> dict:
    from tqdm.auto import tqdm
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    os.makedirs(cfg.out_dir, exist_ok=True)
    mc = model.config
    labels = [i % mc.num_classes for i in range(cfg.n_samples)]
    seeds = [cfg.eval_seed + i for i in range(cfg.n_samples)]
    calib_labels = [i % mc.num_classes for i in range(cfg.calib_images)]
    calib_seeds = [20_000 + cfg.seed * 1000 + i for i in range(cfg.calib_images)]
    mm = module_macs(mc, "linear")
    runs, heat, refs = [], {}, {}
    bar = tqdm(total=len(cfg.settings) + len({n for n, _ in cfg.settings}), desc="compare")

    def run(m: Method):
        net = configure(model, m)
        ctrl = get_controller(model)
        costs = controller_costs(ctrl) if ctrl is not None else {"gates": False}
        imgs, skips = _generate(net, labels, seeds, m.steps, cfg.cfg_scale)
        remove_lazy(model)
        if skips is None and hasattr(net, "measured_skips"):  # diffusers' hook: what really computed
            skips = net.measured_skips()
        macs = 2 * (lazy_macs(skips, mm, **costs) if skips is not None else m.steps * mm.forward)
        runs.append({"m": m, "images": imgs, "macs": macs, "skips": skips})
        return imgs, skips, macs

    def run_static_and_hooks(n: int, ratio: float, macs: float, lazy_name: str):
        """Static reuse and diffusers' hooks (with --only, those named): the static rivals and
        TaylorSeerCache matched to the lazy run's MACs from above, their placement searched; the
        threshold hooks fitted to its MACs on the calibration seeds."""
        hooks = cfg.diffusers_hooks if cfg.diffusers_hooks is not None else DIFFUSERS_HOOKS
        budget = macs / (2 * n * mm.forward)

        def wanted(stem: str) -> bool:  # --only names a rival by its name's start, before its placement is known
            return not cfg.only or any(stem.startswith(p) or p.startswith(stem) for p in cfg.only)
        score, images = _selection_scorer(model, cfg, n)
        searched = searched_static_methods(n, mm, budget, cfg.schedule_candidates, score, images, lazy_name, wanted)
        if cfg.only or "TaylorSeerCache" in hooks:
            searched += searched_taylorseer_methods(n, mm, budget, score, images, lazy_name, wanted)
        for m in searched:
            if run(m)[2] < macs * (1 - 1e-9):  # the verdict at matched MACs leaves it out
                warnings.warn(f"{m.name} spent fewer MACs than {lazy_name}")
        for m in diffusers_methods(n, ratio):
            if m.name.startswith(tuple(cfg.only)) if cfg.only else m.extra["hook"] in hooks:
                run(fit_hook(model, m, budget, calib_labels, calib_seeds, cfg.cfg_scale, cfg.calib_rounds))

    for n in sorted({n for n, _ in cfg.settings}):
        refs[n], _, _ = run(Method(f"DDIM-{n}", n, n, "full", family="DDIM"))
        bar.update(1)
    for n, target in cfg.settings:
        ctrl = _fit_or_load(model, cfg, n, target)
        remove_lazy(model)
        name = f"lazy-{n}@{target:.0%}"
        _, skips, macs = run(Method(name, n, n, "gates", ctrl.config.reuse, ctrl=ctrl, family=DEFAULT))
        ratio = float(skips.float().mean())
        for s in range(1, cfg.fit_seeds):
            other = _fit_or_load(model, cfg, n, target, seed=cfg.seed + s)
            remove_lazy(model)
            run(Method(f"{name}/seed{cfg.seed + s}", n, n, "gates", other.config.reuse, ctrl=other, family=OTHER_SEED,
                       extra={"fit_seed": cfg.seed + s, "of": name}))
        heat[name] = skips.float().mean(-1)
        if cfg.only:  # the default policy against a chosen subset of rivals, e.g. to re-measure it
            run_static_and_hooks(n, ratio, macs, name)
            run(ddim_method(n, macs, 2 * mm.forward, name))
            bar.update(1)
            continue
        if cfg.gates_too:
            gates = _fit_or_load(model, cfg, n, target, mode="onpolicy")
            remove_lazy(model)
            gname = f"gates-{n}@{target:.0%}"
            _, gskips, _ = run(Method(gname, n, n, "gates", gates.config.reuse, ctrl=gates,
                                      family="input-dependent gates"))
            heat[gname] = gskips.float().mean(-1)
            run(l2c_method(n, gskips, float(gskips.float().mean()), gates.config.reuse))
        elif ctrl.forced is None:
            run(l2c_method(n, skips, ratio, ctrl.config.reuse))
        run_static_and_hooks(n, ratio, macs, name)
        for label, policy in POLICIES:
            thr, got = calibrate_policy(model, n, policy, cfg.reuse, ratio, calib_labels, calib_seeds, cfg.cfg_scale,
                                        rounds=cfg.calib_rounds)
            run(Method(f"{label}-{n}@{ratio:.0%}", n, n, "policy", cfg.reuse, policy=policy, threshold=thr,
                       family="training-free policy", extra={"threshold": thr, "calib_ratio": got}))
        run(ddim_method(n, macs, 2 * mm.forward, name))
        bar.update(1)
    bar.close()
    batches = timing_batches(cfg.timing_images)
    timing = time_methods(model, cfg, [r["m"] for r in runs], mc.num_classes, batches)
    extra = matched_time_ddim([r["m"] for r in runs], timing, batches)
    for m in extra:  # DDIM-k at each default row's measured time: the rival a clock would pick
        run(m)
    if extra:
        full = [r["m"] for r in runs if r["m"].kind == "full" and r["m"].steps == r["m"].group]
        timing.update(time_methods(model, cfg, full + extra, mc.num_classes, batches))
    return _score(cfg, model, runs, refs, timing, heat)


def _generate(model, labels, seeds, steps, cfg_scale, batch=64):
    imgs, skips = [], []
    for i in range(0, len(labels), batch):
        g = generate(model, labels[i:i + batch], seeds[i:i + batch], steps=steps, cfg_scale=cfg_scale)
        imgs.append(g.images)
        if g.stats is not None:
            skips.append(g.stats.skips)
    return torch.cat(imgs), (torch.cat(skips, dim=-1) if skips else None)


def _selection_scorer(model, cfg: CompareConfig, n: int):
    """(score(method, k), images): mean PSNR of a method against full compute on the first k of
    the default policy's selection images, as `train.placement_search.search_placements` draws them
    (seeds 40,000 + 1,000 x seed + j, labels j % classes, half of train_calib); never evaluation seeds."""
    half = max(1, cfg.train_calib // 2)
    seeds = [40_000 + 1000 * cfg.seed + j for j in range(half)]
    labels = [j % model.config.num_classes for j in range(half)]
    ref = []

    def score(m: Method, k: int) -> float:
        if not ref:  # full compute, once per setting and only when a rival is searched
            remove_lazy(model)
            ref.append(generate(model, labels, seeds, steps=n, cfg_scale=cfg.cfg_scale).images)
        net = configure(model, m)
        try:
            images = generate(net, labels[:k], seeds[:k], steps=n, cfg_scale=cfg.cfg_scale).images
        finally:
            remove_lazy(model)
        return float(image_psnr(images, ref[0][:k]).mean())
    return score, half


def _fit_or_load(model, cfg: CompareConfig, n: int, target: float, mode: str = "auto", seed: int | None = None):
    """The default policy of `lazydit train-gates --target-lazy` (mode auto), or on-policy gates
    with the harness's operator; from <gates_dir>/<tag>-N-R.safetensors when that file exists.
    `seed`: another fitting seed than cfg.seed (its files end in -seed<S>)."""
    tag = "gates" if mode == "auto" else mode
    seed = cfg.seed if seed is None else seed
    stem = f"{tag}-{n}-{target}" + (f"-seed{seed}" if seed != cfg.seed else "")
    gate_file = os.path.join(cfg.gates_dir, f"{stem}.safetensors") if cfg.gates_dir else None
    if gate_file and os.path.exists(gate_file):
        return load_gates(gate_file, arch=getattr(model, "arch_name", type(model).__name__), depth=model.config.depth,
                          hidden_size=model.config.hidden_size, num_steps=n)
    tcfg = GateTrainConfig(num_steps=n, mode=mode, iters=cfg.train_iters, batch_size=cfg.train_batch,
                           target_lazy=target, cfg_scale=cfg.cfg_scale, rollout_every=cfg.rollout_every, seed=seed,
                           reuse=None if mode == "auto" else cfg.reuse, calib_images=cfg.train_calib,
                           correction_images=cfg.train_calib,
                           schedule_candidates=cfg.schedule_candidates,
                           out_dir=os.path.join(cfg.out_dir, stem))
    ctrl, _ = train_gates(model, tcfg, progress=True)
    return ctrl


def _score(cfg, model, runs, refs, timing, heat) -> dict:
    embedded = cfg.model == EMBEDDED and cfg.fd
    if embedded:
        from ..data import load_reference
        from ..metrics.quality import class_accuracy, effnet_features, fd_kid
        real, _ = load_reference(cfg.n_ref)
        real_f = effnet_features(real)
    base_macs = {r["m"].group: r["macs"] for r in runs if r["m"].kind == "full" and r["m"].steps == r["m"].group}
    table, per_image = [], []
    for r in runs:
        m, ref = r["m"], refs[r["m"].group]
        p = image_psnr(r["images"], ref)
        per_image.append(p)
        lo, hi = bootstrap_ci(p, cfg.bootstrap)
        mse = float(((r["images"].clamp(-1, 1) - ref.clamp(-1, 1)) / 2).pow(2).mean())
        sk = r["skips"]
        entry = {"method": m.name, "family": m.family, "steps": m.steps, "group": m.group, "reuse": m.reuse,
                 "lazy_attn": float(sk[:, :, 0].float().mean()) if sk is not None else 0.0,
                 "lazy_ffn": float(sk[:, :, 1].float().mean()) if sk is not None else 0.0,
                 "gmacs_per_image_cfg": r["macs"] / 1e9, "macs_vs_full": r["macs"] / base_macs[m.group],
                 **timing[m.name, m.group],
                 "psnr": float(p.mean()), "psnr_ci95": [lo, hi],
                 "psnr_pooled": 10 * math.log10(1.0 / mse) if mse > 0 else float("inf"), **m.extra}
        entry["efficiency"] = entry["time_ratio"] / entry["macs_vs_full"]
        if embedded:
            entry.update(fd_kid(real_f, r["images"]))
            entry["class_acc"] = class_accuracy(r["images"], torch.tensor([i % 10 for i in range(cfg.n_samples)]))
        table.append(entry)
        save_grid(r["images"][:20], os.path.join(cfg.out_dir, f"grid-{_slug(m.name)}-g{m.group}.png"), scale=4)
    result = {"config": asdict(cfg), "rows": table, "verdicts": _verdicts(table, per_image, cfg.bootstrap),
              "psnr_definition": "mean over images of per-image PSNR against full compute at the group's step "
                                 "count, images in [0, 1], capped at 100 dB; psnr_pooled: PSNR of the pooled MSE",
              "macs_convention": "linear (thop-style), per image, CFG's 2 rows counted"}
    write_json(os.path.join(cfg.out_dir, "results.json"), result)
    from ..metrics.plots import plot_heatmaps, plot_quality
    plot_heatmaps(heat, os.path.join(cfg.out_dir, "laziness-heatmap.png"))
    plot_quality(table, os.path.join(cfg.out_dir, "quality-vs-macs.png"), embedded)
    for b in timing_batches(cfg.timing_images):
        plot_quality(table, os.path.join(cfg.out_dir, f"quality-vs-time-b{b}.png"), embedded, x=f"time_b{b}",
                     x_label=f"time relative to full compute (batch {b})")
    return result


def _verdicts(table, per_image, resamples) -> list:
    """Per lazy row and match: the best rival by mean PSNR, with the paired bootstrap 95% interval
    of the per-image PSNR difference (same seeds, so pairing removes image difficulty), and the best
    rival by pooled PSNR. Matches: "MACs" (the rivals matched to this row from above, `matched_to`,
    whose MACs are at least its own, however much more one whole step costs; other rivals within
    0.03 of its MACs; the DDIM-k rows added at matched time do not count), and "time b<B>" for
    each timed batch (rivals at most 0.02 slower). With other fitting seeds of the default, each
    verdict also gives each seed's gain over the same best rivals (`fit_seeds`) and the range of the
    gain over all fits."""
    out = []
    for i, r in enumerate(table):
        if r["family"] != DEFAULT:
            continue
        others = [j for j, q in enumerate(table) if q["group"] == r["group"] and j != i and q["family"] != OTHER_SEED
                  and not (q["family"] == "DDIM" and q["steps"] == q["group"])]
        fits = [k for k, q in enumerate(table) if q["family"] == OTHER_SEED and q.get("of") == r["method"]]
        matches = [("MACs", [j for j in others if _macs_matched(table[j], r)])]
        for key in sorted(k for k in r if k.startswith("time_b") and not k.endswith("_range")):
            matches.append((f"time b{key[6:]}", [j for j in others if table[j].get(key, float("inf")) <= r[key] + 0.02]))
        for match, rivals in matches:
            if not rivals:
                continue
            j = max(rivals, key=lambda j: table[j]["psnr"])
            pooled = max(rivals, key=lambda j: table[j].get("psnr_pooled", float("-inf")))
            v = {"lazy": r["method"], "match": match, "best_rival": table[j]["method"],
                 **_gain(table, per_image, i, j, pooled, resamples),
                 "intervals_overlap": not (r["psnr_ci95"][0] > table[j]["psnr_ci95"][1]),
                 "best_pooled_rival": table[pooled]["method"],
                 "fd_lazy": r.get("FD-EffNetLite0"), "fd_rival": table[j].get("FD-EffNetLite0")}
            if fits:
                v["fit_seeds"] = [{"seed": table[k]["fit_seed"], **_gain(table, per_image, k, j, pooled, resamples)}
                                  for k in fits]
                gains = [v["psnr_gain"], *(f["psnr_gain"] for f in v["fit_seeds"])]
                v["gain_range_over_fits"] = [min(gains), max(gains)]
                v["wins_every_fit"] = v["wins"] and all(f["wins"] for f in v["fit_seeds"])
            out.append(v)
    return out


def _gain(table, per_image, i: int, j: int, pooled: int, resamples: int) -> dict:
    """Row i against rival j (mean PSNR, paired interval) and rival `pooled` (pooled PSNR)."""
    lo, hi = bootstrap_ci(per_image[i] - per_image[j], resamples)
    pooled_gain = table[i].get("psnr_pooled", float("nan")) - table[pooled].get("psnr_pooled", float("nan"))
    return {"psnr_gain": table[i]["psnr"] - table[j]["psnr"], "gain_ci95_paired": [lo, hi],
            "pooled_gain": pooled_gain, "wins": bool(lo > 0 and pooled_gain > 0)}


def _macs_matched(rival: dict, lazy: dict) -> bool:
    if rival.get("matched_time"):
        return False
    if rival.get("matched_to") == lazy["method"]:
        return rival["macs_vs_full"] >= lazy["macs_vs_full"] - 1e-9
    return abs(rival["macs_vs_full"] - lazy["macs_vs_full"]) <= 0.03


def _slug(name: str) -> str:
    return name.replace("@", "-").replace("%", "pct").replace("/", "-")


def format_table(result: dict) -> str:
    rows = result["rows"]
    has_fd = "FD-EffNetLite0" in rows[0]
    batches = sorted(int(k[6:]) for k in rows[0] if k.startswith("time_b") and not k.endswith("_range"))
    head = ["method", "vs", "lazy attn/ffn", "MACs", *(f"time b{b}" for b in batches), "PSNR (95% CI)", "pooled"]
    head += ["FD-EffNet", "KID", "class acc"] if has_fd else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lo, hi = r["psnr_ci95"]
        cells = [r["method"], f"DDIM-{r['group']}", f"{r['lazy_attn']:.2f}/{r['lazy_ffn']:.2f}",
                 f"{r['macs_vs_full']:.2f}", *(time_cell(r, b) for b in batches), f"{r['psnr']:.2f} ({lo:.2f}-{hi:.2f})",
                 f"{r['psnr_pooled']:.2f}"]
        if has_fd:
            cells += [f"{r['FD-EffNetLite0']:.2f}", f"{r['KID-EffNetLite0']:.4f}", f"{r['class_acc']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    for v in result.get("verdicts", []):
        lo, hi = v["gain_ci95_paired"]
        lines.append(f"{v['lazy']}: {v['psnr_gain']:+.2f} dB over the best rival at matched {v.get('match', 'MACs')}, "
                     f"{v['best_rival']} (paired 95% CI {lo:+.2f} to {hi:+.2f}; unpaired intervals "
                     f"{'overlap' if v['intervals_overlap'] else 'do not overlap'}); pooled "
                     f"{v.get('pooled_gain', float('nan')):+.2f} dB over {v.get('best_pooled_rival', '-')}"
                     + (f"; over {1 + len(v['fit_seeds'])} fitting seeds the gain ranges "
                        f"{v['gain_range_over_fits'][0]:+.2f} to {v['gain_range_over_fits'][1]:+.2f} dB"
                        f" ({'wins' if v['wins_every_fit'] else 'does not win'} on every fit)" if "fit_seeds" in v else ""))
    return "\n".join(lines)
