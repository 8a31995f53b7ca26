"""Mutation check: apply each deliberate breakage of issue 10 (item 5) to a temporary copy of
the tree, run the tests that should catch it, and print breakage -> caught / NOT caught.

    nice -n 19 python scripts/mutation_check.py            # all breakages
    nice -n 19 python scripts/mutation_check.py --only rho,cap  # names containing "rho" or "cap"
    nice -n 19 python scripts/mutation_check.py --area      # the area's whole test files instead

Each breakage is an exact text substitution. The script refuses to run if a target text is
missing or ambiguous (it would otherwise test nothing), and it first checks that the named
tests pass on the unbroken copy, so "caught" means the breakage made them fail.
Not part of the test suite: it runs the selected tests once per breakage (a few minutes).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name, file under src/lazydit, old text, new text, the tests that catch it (file or file::test),
# and the area's test files (--area runs these instead: what the suite of that area catches)
BREAKAGES = [
    ("CFG rows swapped in replayed caches", "train/rollout.py",
     "sel = sel.permute(3, 0, 1, 2, 4, 5).flatten(0, 1)",
     "sel = sel.flip(3).permute(3, 0, 1, 2, 4, 5).flatten(0, 1)",
     ["tests/test_breakages.py::test_replayed_caches_are_the_sampler_s_own_rows_and_step"], ["tests/test_train_gates.py"]),
    ("lazy_macs attn/ffn counts swapped", "metrics/macs.py",
     "int(done[:, :, 0].sum()), int(done[:, :, 1].sum())",
     "int(done[:, :, 1].sum()), int(done[:, :, 0].sum())",
     ["tests/test_breakages.py::test_lazy_macs_counts_attention_and_ffn_skips_apart"], ["tests/test_eval.py"]),
    ("budget rho update sign flipped", "train/gates.py",
     "cfg.dual_lr * (cfg.target_lazy - est)",
     "cfg.dual_lr * (est - cfg.target_lazy)",
     ["tests/test_breakages.py::test_budget_dual_raises_rho_below_target_and_lowers_it_above"], ["tests/test_train_gates.py"]),
    ("step gains ignored", "train/gates.py",
     "mse = (per_image * self.weights[steps].to(per_image.device)).sum() / cfg.batch_size",
     "mse = per_image.sum() / cfg.batch_size",
     ["tests/test_breakages.py::test_onpolicy_loss_weights_each_image_by_its_step_gain"], ["tests/test_train_gates.py"]),
    ("on-policy targets kept across pools", "train/gates.py",
     "        self.targets = {}  # (step, image)",
     "        pass  # (step, image)",
     ["tests/test_train_gates.py::test_onpolicy_targets_are_full_compute_at_the_pools_states_and_renewed_with_the_pool"],
     ["tests/test_train_gates.py"]),
    ("compare: speedup inverted", "eval/timing.py",
     'ratios = sorted(s[m.name, m.group, b] / s[f"DDIM-{m.group}", m.group, b] for s in per_round)',
     'ratios = sorted(s[f"DDIM-{m.group}", m.group, b] / s[m.name, m.group, b] for s in per_round)',
     ["tests/test_breakages.py::test_compare_timing_is_method_over_full_compute_after_warm_up"], ["tests/test_demo.py"]),
    ("compare: PSNR peak wrong", "metrics/psnr.py",
     "mse = ((x.float().clamp(-1, 1) - ref.float().clamp(-1, 1)) / 2).pow(2).flatten(1).mean(1)",
     "mse = (x.float().clamp(-1, 1) - ref.float().clamp(-1, 1)).pow(2).flatten(1).mean(1)",
     ["tests/test_demo.py::test_psnr_and_interval_by_hand"], ["tests/test_demo.py"]),
    ("compare: L2C baseline replaced by static", "rivals/methods.py",
     "static_from_decisions(skips, ratio), family=\"L2C\"",
     "patterns.target_fraction(n, skips.shape[1], ratio), family=\"L2C\"",
     ["tests/test_breakages.py::test_l2c_mask_is_the_gates_average_not_a_static_pattern"], ["tests/test_demo.py", "tests/test_eval.py"]),
    ("bench: warm-up rounds recorded", "eval/bench.py",
     "if rnd >= c.warmup:",
     "if rnd >= 0:",
     ["tests/test_eval.py::test_bench_reports_ratios"], ["tests/test_eval.py"]),
    ("paper mode: step k-1 off by one", "train/gates.py",
     "x_prev = self.pool.xs[steps - 1, torch.arange(len(steps))]",
     "x_prev = self.pool.xs[steps, torch.arange(len(steps))]",
     ["tests/test_breakages.py::test_paper_mode_starts_from_step_k_minus_1_and_steps_to_k"], ["tests/test_train_gates.py"]),
    ("paper mode: noise-schedule index of k-1 off by one", "train/gates.py",
     "idx_prev = cfg.num_steps - steps  # noise-schedule index",
     "idx_prev = cfg.num_steps - 1 - steps  # noise-schedule index",
     ["tests/test_breakages.py::test_paper_mode_starts_from_step_k_minus_1_and_steps_to_k"], ["tests/test_train_gates.py"]),
    ("noise objective: index off by one", "train/gates.py",
     "self.sched.alphas_cumprod, dtype=torch.float32)[idx_prev - 1]",
     "self.sched.alphas_cumprod, dtype=torch.float32)[idx_prev]",
     ["tests/test_breakages.py::test_noise_objective_target_is_the_true_noise_of_x_k"], ["tests/test_train_gates.py"]),
    ("replayed caches one step too old", "train/rollout.py",
     "by_step.setdefault(k, []).append((j, i))",
     "by_step.setdefault(k - 1, []).append((j, i))",
     ["tests/test_breakages.py::test_replayed_caches_are_the_sampler_s_own_rows_and_step"], ["tests/test_train_gates.py"]),
    ("automatic skip cap not applied", "train/gates.py",
     "ctrl.set_config(reuse=cfg.reuse_operator, max_skip_run=cap)",
     "ctrl.set_config(reuse=cfg.reuse_operator, max_skip_run=cfg.max_skip_run)",
     ["tests/test_breakages.py::test_budget_mode_sets_the_automatic_skip_cap"], ["tests/test_train_gates.py"]),
    ("analyze compares every step with step 0", "eval/analyze.py",
     "prev[key] = out.detach()",
     "prev.setdefault(key, out.detach())",
     ["tests/test_eval.py::test_analyze_writes_similarities"], ["tests/test_eval.py"]),
    ("CLI None overrides clear the gate file's cap", "core/lazy/gatefile.py",
     "cfg_dict.update({k: v for k, v in (overrides or {}).items() if v is not None})",
     "cfg_dict.update(dict(overrides or {}))",
     ["tests/test_breakages.py::test_sampling_without_a_cap_flag_keeps_the_gate_file_s_cap"], ["tests/test_lazy_core.py", "tests/test_errors.py"]),
]


def copy_tree(dst: str) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in ("src", "tests"):
        shutil.copytree(os.path.join(ROOT, name), os.path.join(dst, name), ignore=ignore)
    shutil.copy(os.path.join(ROOT, "pyproject.toml"), dst)


def run_tests(tree: str, selections: list[str], extra: list[str] = ()) -> tuple[bool, str]:
    env = dict(os.environ, PYTHONPATH=os.path.join(tree, "src"), PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *extra, *selections],
                          cwd=tree, env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    return proc.returncode == 0, lines[-1] if lines else proc.stderr.strip()[-200:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated texts: run only breakages whose names contain one, in that order")
    ap.add_argument("--area", action="store_true", help="run each breakage's area test files, not its named tests")
    ap.add_argument("--deselect", action="append", default=[], help="pass --deselect to pytest (repeatable)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the check that the tests pass unbroken")
    args = ap.parse_args()
    # --only a,b: the breakages whose names contain a, then those containing b, ...
    parts = [p.strip().lower() for p in args.only.split(",")] if args.only else [""]
    chosen = []
    for part in parts:
        chosen += [b for b in BREAKAGES if part in b[0].lower() and b not in chosen]
    if not chosen:
        print(f"no breakage matches {args.only!r}", file=sys.stderr)
        return 2
    extra = [a for d in args.deselect for a in ("--deselect", d)]
    with tempfile.TemporaryDirectory(prefix="lazydit-mut-") as tree:
        copy_tree(tree)
        # Refuse before running anything if any substitution would be a no-op.
        for name, rel, old, new, *_ in chosen:
            text = open(os.path.join(tree, "src", "lazydit", rel)).read()
            if text.count(old) != 1:
                print(f"refusing: breakage {name!r}: target text found {text.count(old)} times in "
                      f"src/lazydit/{rel} (need exactly 1): {old!r}", file=sys.stderr)
                return 2
        probe = subprocess.run([sys.executable, "-c", "import lazydit; print(lazydit.__file__)"], cwd=tree,
                               env=dict(os.environ, PYTHONPATH=os.path.join(tree, "src")), capture_output=True,
                               text=True)
        if not probe.stdout.strip().startswith(tree):
            print(f"refusing: lazydit imports from {probe.stdout.strip()!r}, not the copy in {tree}", file=sys.stderr)
            return 2
        if not args.no_baseline:
            sels = sorted({s for b in chosen for s in b[5 if args.area else 4]})
            ok, tail = run_tests(tree, sels, extra)
            print(f"baseline (unbroken): {'pass' if ok else 'FAIL'}  [{tail}]", flush=True)
            if not ok:
                print("refusing: the selected tests fail without any breakage", file=sys.stderr)
                return 2
        rows = []
        for name, rel, old, new, now, area in chosen:
            sels = area if args.area else now
            path = os.path.join(tree, "src", "lazydit", rel)
            orig = open(path).read()
            with open(path, "w") as f:
                f.write(orig.replace(old, new))
            try:
                ok, tail = run_tests(tree, sels, extra)
            finally:
                with open(path, "w") as f:
                    f.write(orig)
            rows.append((name, not ok, tail, " ".join(sels)))
            print(f"  {name}: {'caught' if not ok else 'NOT caught'}  [{tail}]", flush=True)
    width = max(len(r[0]) for r in rows)
    print(f"\n| {'breakage'.ljust(width)} | result     | tests run |\n|{'-' * (width + 2)}|------------|---|")
    for name, caught, _, sels in rows:
        print(f"| {name.ljust(width)} | {'caught' if caught else 'NOT caught':10} | {sels} |")
    missed = sum(not r[1] for r in rows)
    print(f"\n{len(rows) - missed} of {len(rows)} breakages caught")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
