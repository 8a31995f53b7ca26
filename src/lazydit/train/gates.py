"""Lazy learning: fit the gates with the backbone frozen (distillation MSE + lazy loss).

Two recipes share one loop:

* ``paper``: the published one-step recipe. x at step k-1 (from the frozen model's own DDIM
  trajectories, or q_sample of data), a full forward fills the caches, one DDIM step to k,
  then MSE(lazy soft output at k, full output at k). Caches are always one step old.
* ``onpolicy`` (default): the current gates are rolled out with hard decisions and CFG, exactly
  as at sampling, and the soft loss is taken on replayed (state, caches) pairs of those rollouts,
  so the gates learn what a cache that is many steps stale costs. The distillation target is
  the full-compute guided output at the same state.

Every iteration trains the gates of all steps at once: each image of the batch sits at its own
step (per-row step indices), so each per-step gate sees the whole budget of iterations.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import flags
from ..core.diffusion.samplers import ddim_step
from ..core.diffusion.noise_schedule import NoiseSchedule, q_sample
from ..io import open_run_log, write_json
from ..core.lazy import LazyConfig, apply_lazy, get_controller, save_gates
from ..core.lazy.reuse import is_fitted, operator_order
from ..pipeline import cfg_model_fn
from . import distributed as dist
from .checkpoint import first_difference, load_checkpoint, read_checkpoint_meta, save_checkpoint
from .rollout import available_bytes, caches_for, propagation_gains, rollout, rollout_bytes
from .threshold_search import search_increasing


# What train-gates fits: a static skip schedule by placement search, or input-dependent gates.
MODES = ("auto", "placement", "onpolicy", "paper")
MODE_ALIASES = {"schedule": "placement"}  # the name before placement, kept for scripts that pass it


@dataclass
class GateTrainConfig:
    # One field per option. The `metadata` is the `lazydit train-gates` flag, which lazydit.cli_config
    # derives from it: --field-name (or "flag"), "help", "choices", "type" (a parser, named or
    # callable); a bool defaulting to True becomes --no-field-name. Options other configs share come
    # from `lazydit.flags`, where each such flag is declared once.
    num_steps: int = flags.steps(50, help="sampling steps N the gates serve")
    mode: str = field(default="auto", metadata={
        "choices": MODES + tuple(MODE_ALIASES),
        "help": "placement: search a static skip schedule + fitted forecast (default with --target-lazy); "
                "onpolicy: input-dependent gates on rollouts (default without); paper: published recipe "
                "(also accepted: schedule, the old name of placement)"})
    source: str = field(default="data-free", metadata={
        "choices": ("data-free", "dataset"),
        "help": "data-free: the frozen model's own DDIM trajectories; dataset: q_sample of data (paper mode)"})
    objective: str = field(default="distill", metadata={
        "choices": ("distill", "noise"),
        "help": "distill: MSE to the full output; noise: the paper's alternative (needs --source dataset)"})
    iters: int = field(default=500, metadata={"help": "optimizer steps"})
    batch_size: int = flags.batch_size(8, help="global batch (images), split over ranks")
    lr: float = field(default=1e-4, metadata={"help": "AdamW learning rate (the paper's)"})
    rho_attn: float = field(default=1e-3, metadata={
        "help": "lazy-loss weight for attention (start value in budget mode)"})
    rho_ffn: float = field(default=1e-3, metadata={"help": "lazy-loss weight for the feed-forward"})
    target_lazy: float | None = field(default=None, metadata={"help": "budget: fraction of module calls to skip"})
    dual_lr: float = field(default=0.5, metadata={
        "help": "budget mode: log-rho change per unit of lazy-ratio error, per iteration"})
    rho_init: float = field(default=1e-5, metadata={"help": "budget mode: starting rho (small: the dual raises it)"})
    cfg_scale: float = flags.cfg_scale(3.0, help="guidance used in rollouts (match your sampling)")
    label_dropout: float = field(default=0.1, metadata={
        "help": "paper mode: fraction of labels sent to the null class"})
    rollout_every: int = field(default=64, metadata={   # 16 and 32 scored the same (docs/method.md)
        "type": "positive_int", "help": "iterations between rollouts of the current gates"})
    max_skip_run: int | None = field(default=None, metadata={
        "help": "cap on consecutive skips, at training and sampling"})
    reuse: str | None = flags.reuse(None, choices=flags.REUSE + ("fit1", "fit2", "fit3"), help=(
        "what a skipped module returns (default: fit2 for placement, then fit3 tried; taylor1 "
        "on-policy; copy in --mode paper)"))
    schedule_candidates: int = field(default=12, metadata={
        "type": "positive_int", "help": "placement mode: candidate skip schedules (warm-up lengths) tried"})
    correction_ranks: tuple = field(default=(4, 16), metadata={
        "type": "ranks", "help": "placement mode: input-correction ranks tried, comma-separated, or 'none'"})
    correction_images: int = field(default=32, metadata={
        "type": "positive_int", "help": "placement mode: images the input correction is fitted on (at most 1000)"})
    correction_passes: int = field(default=2, metadata={
        # each pass adds the statistics of the trajectory the previous one produces
        "type": "positive_int", "help": "placement mode: refits of the correction along the trajectory it produces"})
    auto_cap: bool = field(default=True, metadata={  # see docs/method.md
        "help": "budget mode: no automatic cap on consecutive skips (default: ceil(R/(1-R)))"})
    step_weights: str = field(default="gain", metadata={
        "choices": ("gain", "uniform"),
        "help": "onpolicy: weight each step's loss by its measured effect on the final sample (gain), "
                "or equally as the paper (uniform)"})
    calibrate: bool = field(default=True, metadata={"help": "budget mode: keep threshold 0.5 (default: tune it on real sampling)"})
    calib_images: int = field(default=32, metadata={
        "type": "positive_int",
        "help": "images that calibrate: placement mode fits on half and selects on the other half"})
    ckpt_every: int = field(default=100, metadata={
        "type": "positive_int", "help": "iterations between checkpoints (rounded to --rollout-every)"})
    seed: int = flags.seed()
    out_dir: str = flags.out_dir("runs/gates")

    def __post_init__(self):
        self.mode = MODE_ALIASES.get(self.mode, self.mode)

    def validate(self):
        if self.num_steps < 2:
            raise ValueError(f"gates need N >= 2 sampling steps, got {self.num_steps}")
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose placement, onpolicy or paper")
        if self.train_mode == "placement" and self.target_lazy is None:
            raise ValueError("placement mode needs a budget: give --target-lazy R")
        if self.train_mode == "placement" and self.source != "data-free":
            raise ValueError("placement mode is data-free; use --mode paper with --source dataset")
        if any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in self.correction_ranks):
            raise ValueError(f"correction ranks must be integers >= 1, got {list(self.correction_ranks)}")
        if not 1 <= self.correction_images <= 1000 or self.correction_passes < 1:
            raise ValueError(f"correction_images must be in 1..1000 and correction_passes >= 1, got "
                             f"{self.correction_images} and {self.correction_passes}")
        if self.schedule_candidates < 1 or self.calib_images < 2:
            raise ValueError("schedule_candidates must be >= 1 and calib_images >= 2")
        if self.source not in ("data-free", "dataset"):
            raise ValueError(f"unknown source {self.source!r}; choose data-free or dataset")
        if self.train_mode == "onpolicy" and self.source == "dataset":
            raise ValueError("on-policy training rolls out the model itself; use --mode paper with --source dataset")
        if self.objective not in ("distill", "noise"):
            raise ValueError(f"unknown objective {self.objective!r}; choose distill or noise")
        if self.objective == "noise" and self.source != "dataset":
            raise ValueError("the noise objective needs the true noise: use --source dataset")
        for name in ("lr", "rho_attn", "rho_ffn", "dual_lr", "rho_init", "cfg_scale", "label_dropout"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.rho_attn < 0 or self.rho_ffn < 0:
            raise ValueError(f"rho must be >= 0, got attn {self.rho_attn}, ffn {self.rho_ffn}")
        if self.target_lazy is not None and not 0 <= self.target_lazy <= 0.95:  # refuses NaN too
            raise ValueError(f"target lazy ratio must be in [0, 0.95], got {self.target_lazy}")
        if self.iters < 1 or self.batch_size < 1 or self.rollout_every < 1:
            raise ValueError("iters, batch size and rollout_every must be positive")
        if self.step_weights not in ("gain", "uniform"):
            raise ValueError(f"unknown step weights {self.step_weights!r}; choose gain or uniform")
        if self.cfg_scale < 1:
            raise ValueError(f"cfg scale must be >= 1, got {self.cfg_scale}")
        operator_order(self.reuse_operator)
        if self.train_mode == "paper" and self.reuse_operator != "copy":
            raise ValueError("paper mode trains against a cache one step old, which has nothing to forecast "
                             "from; use --reuse copy or --mode onpolicy")
        if self.train_mode != "placement" and is_fitted(self.reuse_operator):
            raise ValueError(f"--reuse {self.reuse_operator} fits weights per cell of a static skip schedule; "
                             f"use --mode placement, or taylor1/taylor2 with input-dependent gates")

    @property
    def train_mode(self) -> str:
        if self.mode != "auto":
            return self.mode
        return "placement" if self.target_lazy is not None else "onpolicy"

    @property
    def reuse_operator(self) -> str:
        if self.reuse is not None:
            return self.reuse
        return {"placement": "fit2", "onpolicy": "taylor1"}.get(self.train_mode, "copy")


def _gen(*key) -> torch.Generator:
    """A generator seeded by a tuple, so every draw is a function of (seed, iteration, image);
    sha256, not hash(), because string hashing differs between processes."""
    digest = hashlib.sha256(repr(key).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _image_draws(cfg, it, n_images, lo, hi, num_classes):
    """Per-image (step, label, dropped) draws for the global batch, sliced to rows [lo, hi)."""
    steps, labels, drop = [], [], []
    for j in range(lo, hi):
        g = _gen(cfg.seed, it, j)
        steps.append(int(torch.randint(1, cfg.num_steps, (1,), generator=g)))
        labels.append(int(torch.randint(0, num_classes, (1,), generator=g)))
        drop.append(bool(torch.rand(1, generator=g) < cfg.label_dropout))
    return torch.tensor(steps), torch.tensor(labels), torch.tensor(drop)


class GateTrainer:
    """Owns one training run: model with gates, optimizer, dual variable, pool and logging."""

    def __init__(self, model, cfg: GateTrainConfig, dataset=None, arch: str | None = None,
                 noise_schedule: NoiseSchedule | None = None):
        cfg.validate()
        if cfg.source == "dataset" and dataset is None:
            raise ValueError("--source dataset needs a dataset (images in [-1, 1] and labels)")
        self.cfg, self.model, self.dataset = cfg, model.eval().requires_grad_(False), dataset
        self.device = next(model.parameters()).device
        self.rank, self.world = dist.rank(), dist.world_size()
        if cfg.batch_size % self.world:
            raise ValueError(f"batch size {cfg.batch_size} does not split over {self.world} ranks")
        ctrl = get_controller(model)
        if ctrl is None:
            ctrl = apply_lazy(model, cfg.num_steps, LazyConfig(num_steps=cfg.num_steps, max_skip_run=cfg.max_skip_run,
                                                               reuse=cfg.reuse_operator))
        elif ctrl.config.num_steps != cfg.num_steps:
            raise ValueError(f"model has {ctrl.config.num_steps}-step gates, training asks for {cfg.num_steps}")
        cap = cfg.max_skip_run
        if cap is None and cfg.auto_cap and cfg.target_lazy and cfg.train_mode != "placement":
            cap = max(1, math.ceil(cfg.target_lazy / (1 - cfg.target_lazy) - 1e-9))
        # The operator the gates learn against is the one they serve with; the gate file carries
        # the cap, so sampling applies it too. The controller replaces its config: the LazyConfig
        # given to apply_lazy may be the caller's, shared with other models.
        ctrl.set_config(reuse=cfg.reuse_operator, max_skip_run=cap)
        self.ctrl = ctrl
        self.memory = self._check_memory()
        self.opt = torch.optim.AdamW([ctrl.attn, ctrl.ffn], lr=cfg.lr, weight_decay=0.0)
        # Rollouts run on lazydit's respaced DDIM, or on a given noise schedule of N steps (e.g. a diffusers
        # scheduler's timesteps: lazydit.integrations.diffusers.models.noise_schedule_from_scheduler).
        self.sched = noise_schedule or NoiseSchedule.respaced(cfg.num_steps)
        if self.sched.num_steps != cfg.num_steps:
            raise ValueError(f"the noise schedule has {self.sched.num_steps} steps, training asks for {cfg.num_steps}")
        rho = (cfg.rho_init, cfg.rho_init) if cfg.target_lazy is not None else (cfg.rho_attn, cfg.rho_ffn)
        self.log_rho = torch.tensor([math.log(max(r, 1e-12)) for r in rho])
        self.it = 0
        self.pool, self.targets = None, {}
        lo = self.rank * cfg.batch_size // self.world
        self.rows = (lo, lo + cfg.batch_size // self.world)
        self.weights = torch.ones(cfg.num_steps)
        if cfg.step_weights == "gain" and cfg.train_mode == "onpolicy":
            # Same seeds on every rank: every rank derives the same weights without communication.
            g = _gen(cfg.seed, "gains")
            n_img = 4
            labels = torch.randint(0, model.config.num_classes, (n_img,), generator=g)
            self.weights = propagation_gains(model, ctrl, self.sched, labels,
                                             [cfg.seed * 7919 + 17 + j for j in range(n_img)], cfg.cfg_scale)

    def _check_memory(self) -> int:
        """Refuse, before any work, a batch whose rollouts cannot fit; returns the estimate."""
        cfg = self.cfg
        if cfg.train_mode == "placement" or (cfg.train_mode == "paper" and cfg.source == "dataset"):
            return 0
        itemsize = next(self.model.parameters()).element_size()
        need = rollout_bytes(self.model.config, self.ctrl.depth, self.ctrl.dim, cfg.num_steps,
                             cfg.batch_size // self.world, cfg.cfg_scale > 1, cfg.train_mode == "onpolicy",
                             kept_per_image=cfg.rollout_every, itemsize=itemsize)
        have = available_bytes(self.device)
        if have is not None and need > 0.9 * have:
            raise ValueError(f"rollouts of {cfg.batch_size // self.world} images x {cfg.num_steps} steps need about "
                             f"{need / 2**30:.1f} GiB, more than the {have / 2**30:.1f} GiB free on {self.device}: "
                             f"lower --batch-size or --rollout-every (or spread the batch over more ranks)")
        return need

    # ---- data ---------------------------------------------------------------------------
    def _refresh_pool(self):
        """Roll out the current policy (onpolicy) or full compute (paper, data-free)."""
        cfg, (lo, hi) = self.cfg, self.rows
        r = self.it // cfg.rollout_every
        g = _gen(cfg.seed, "pool", r)
        labels = torch.randint(0, self.model.config.num_classes, (cfg.batch_size,), generator=g)[lo:hi]
        seeds = [cfg.seed * 1_000_003 + r * cfg.batch_size + j for j in range(lo, hi)]
        mode = "hard" if cfg.train_mode == "onpolicy" else "full"
        # Keep only the reuse values the pool's iterations will draw: (step, image) per iteration.
        keep = [(int(k), j) for it in range(r * cfg.rollout_every, min((r + 1) * cfg.rollout_every, cfg.iters))
                for j, k in enumerate(_image_draws(cfg, it, cfg.batch_size, lo, hi, self.model.config.num_classes)[0])]
        self.pool = rollout(self.model, self.ctrl, self.sched, labels, seeds, cfg.cfg_scale, mode=mode,
                            record_caches=cfg.train_mode == "onpolicy", keep=keep)
        self.targets = {}  # (step, image) -> full-compute output at the pool's state: fixed per pool

    def _t(self, steps):
        return torch.as_tensor(self.sched.timestep_map, dtype=torch.long)[self.cfg.num_steps - 1 - steps].to(self.device)

    # ---- one iteration ------------------------------------------------------------------
    def _loss_onpolicy(self, steps):
        ro, ctrl, n_local = self.pool, self.ctrl, len(steps)
        images = torch.arange(n_local)
        x = ro.xs[steps, images]
        rows_steps = torch.cat([steps, steps]) if self.cfg.cfg_scale > 1 else steps
        self._fill_targets(steps)
        target = torch.stack([self.targets[int(k), j] for j, k in enumerate(steps)])
        ctrl.prime(caches_for(ro, steps, images, self.cfg.cfg_scale > 1))
        ctrl.set_step(rows_steps)
        ctrl.set_mode("soft")
        pred = cfg_model_fn(self.model, ro.labels.to(self.device), self.cfg.cfg_scale)(x, self._t(steps))
        c = self.model.config.in_channels  # DDIM reads eps only, never the learned-sigma channels
        return pred[:, :c], target[:, :c], x

    @torch.no_grad()
    def _fill_targets(self, steps):
        """Full-compute outputs of the batch's (step, image) pairs the pool has not met yet: a
        pool serves `rollout_every` batches, so pairs recur, and their target never changes."""
        new = torch.tensor([j for j, k in enumerate(steps) if (int(k), j) not in self.targets], dtype=torch.long)
        if not len(new):
            return
        ks = steps[new]
        ctrl = self.ctrl
        ctrl.set_mode("full")
        ctrl.prime({})
        ctrl.set_step(torch.cat([ks, ks]) if self.cfg.cfg_scale > 1 else ks)
        fn = cfg_model_fn(self.model, self.pool.labels[new].to(self.device), self.cfg.cfg_scale)
        out = fn(self.pool.xs[ks, new], self._t(ks))
        for j, k, o in zip(new.tolist(), ks.tolist(), out):
            self.targets[k, j] = o

    def _loss_paper(self, steps, labels, drop):
        """The published recipe: full step at k-1 fills the caches, DDIM to k, soft at k."""
        cfg, ctrl, nc = self.cfg, self.ctrl, self.model.config.num_classes
        labels = torch.where(drop, nc, labels).to(self.device)
        idx_prev = cfg.num_steps - steps  # noise-schedule index of step k-1 (= N-1-(k-1))
        noise = None
        if cfg.source == "dataset":
            imgs, _ = self.dataset
            g = _gen(cfg.seed, "data", self.it)
            pick = torch.randint(0, len(imgs), (cfg.batch_size,), generator=g)[self.rows[0]:self.rows[1]]
            x0 = imgs[pick].to(self.device)
            labels = torch.where(drop, nc, self.dataset[1][pick]).to(self.device)
            noise = torch.randn(x0.shape, generator=_gen(cfg.seed, "noise", self.it, self.rank)).to(self.device)
            x_prev = q_sample(self.sched, x0, idx_prev.to(self.device), noise)
        else:
            # The trajectory was guided towards its own labels: condition on those, then drop.
            x_prev = self.pool.xs[steps - 1, torch.arange(len(steps))]
            labels = torch.where(drop, nc, self.pool.labels[: len(steps)]).to(self.device)
        with torch.no_grad():
            ctrl.set_mode("full")
            ctrl.prime({})
            ctrl.set_step(steps - 1)
            out_prev = self.model(x_prev, self._t(steps - 1), labels)
            x = ddim_step(self.sched, out_prev, x_prev, idx_prev)
            cache = ctrl.reuse_values()
            ctrl.prime({})
            ctrl.set_step(steps)
            target = self.model(x, self._t(steps), labels)
        if cfg.objective == "noise":
            # The paper's alternative: the true noise of x at step k, derived from x0 and x_k.
            ac = torch.as_tensor(self.sched.alphas_cumprod, dtype=torch.float32)[idx_prev - 1].to(self.device)
            ac = ac.view(-1, 1, 1, 1)
            target = (x - ac.sqrt() * x0) / (1 - ac).sqrt()
        ctrl.prime(cache)
        ctrl.set_step(steps)
        ctrl.set_mode("soft")
        pred = self.model(x, self._t(steps), labels)
        c = self.model.config.in_channels
        return pred[:, :c], target[:, :c], x

    def step(self) -> dict:
        cfg, ctrl = self.cfg, self.ctrl
        if self.pool is None or self.it % cfg.rollout_every == 0:
            if not (cfg.train_mode == "paper" and cfg.source == "dataset"):
                self._refresh_pool()
        steps, labels, drop = _image_draws(cfg, self.it, cfg.batch_size, *self.rows, self.model.config.num_classes)
        ctrl.reset()
        if cfg.train_mode == "onpolicy":
            pred, target, _ = self._loss_onpolicy(steps)
        else:
            pred, target, _ = self._loss_paper(steps, labels, drop)
        scores = ctrl.state.soft_scores
        n_rows = scores[0][2].shape[0]
        s_attn = sum(s for k, _, s in scores if k == "attn")  # (rows,) sum over layers
        s_ffn = sum(s for k, _, s in scores if k == "ffn")
        rho = self.log_rho.exp()
        # Per-image sums divided by the GLOBAL batch: gradients summed over ranks are the mean.
        per_image = F.mse_loss(pred, target, reduction="none").flatten(1).mean(1)
        mse = (per_image * self.weights[steps].to(per_image.device)).sum() / cfg.batch_size
        rows_per_image = n_rows / len(steps)
        lazy = (rho[0] * s_attn.sum() + rho[1] * s_ffn.sum()) / (cfg.batch_size * rows_per_image)
        loss = mse + lazy
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        dist.sum_grads([ctrl.attn, ctrl.ffn])
        self.opt.step()
        ctrl.set_mode("hard")
        ctrl.reset()
        # Hard decisions on this batch estimate the lazy ratio at sampling (steps >= 1).
        depth = ctrl.depth
        skip = torch.stack([(s.detach() < ctrl.config.threshold(k)).float().sum() for k, _, s in scores])
        counts = dist.sum_tensor(torch.stack([skip.sum(), torch.tensor(float(n_rows * depth * 2)),
                                              mse.detach() * cfg.batch_size / len(steps) / self.world]))
        est = float(counts[0] / counts[1]) * (cfg.num_steps - 1) / cfg.num_steps
        if cfg.target_lazy is not None:
            # Multiplicative (log-space) dual ascent on rho, clamped to the paper's range and beyond.
            self.log_rho = (self.log_rho + cfg.dual_lr * (cfg.target_lazy - est)).clamp(
                math.log(1e-9), math.log(1e2))
        self.it += 1
        return {"iter": self.it, "loss": float(loss.detach()), "mse": float(counts[2]), "lazy_est": est,
                "rho_attn": float(rho[0]), "rho_ffn": float(rho[1])}

    # ---- persistence --------------------------------------------------------------------
    def _model_id(self) -> dict:
        return {"arch": getattr(self.model, "arch_name", type(self.model).__name__), "depth": self.ctrl.depth,
                "hidden_size": self.ctrl.dim}

    def save(self, path):
        save_checkpoint(path, {"attn": self.ctrl.attn, "ffn": self.ctrl.ffn, "log_rho": self.log_rho},
                        self.opt, {"iter": self.it, "config": asdict(self.cfg), "model": self._model_id(),
                                   "schedule": self._noise_schedule_id()})  # the key checkpoints carry

    def _noise_schedule_id(self) -> dict:
        """The rollouts' noise schedule: a resumed run on other timesteps (e.g. another diffusers
        scheduler) would train its remaining iterations for a sampler it was not started for."""
        return {"timesteps": [int(t) for t in self.sched.timestep_map], "betas": [float(b) for b in self.sched.betas]}

    def load(self, path):
        """Continue the run saved at `path`, which must be this run: same model, same config."""
        meta = read_checkpoint_meta(path)
        if meta.get("model") != self._model_id():
            raise ValueError(f"checkpoint {path} belongs to another model ({meta.get('model')}), not {self._model_id()}")
        diff = first_difference(meta["config"], asdict(self.cfg), ignore=("out_dir",))
        if diff is not None:
            raise ValueError(f"checkpoint {path} is from a different run ({diff}); resume with the same options, "
                             f"or start afresh in another --out")
        if "schedule" in meta and meta["schedule"] != self._noise_schedule_id():
            was, now = meta["schedule"], self._noise_schedule_id()
            what = (f"timesteps {was['timesteps']}, now {now['timesteps']}" if was["timesteps"] != now["timesteps"]
                    else "the same timesteps, other noise levels")
            raise ValueError(f"checkpoint {path} was rolled out on another noise schedule ({what}); resume on the same "
                             f"scheduler, or start afresh in another --out")
        tensors, meta = load_checkpoint(path, self.opt)
        with torch.no_grad():
            self.ctrl.attn.copy_(tensors["attn"])
            self.ctrl.ffn.copy_(tensors["ffn"])
        self.log_rho = tensors["log_rho"].clone()
        self.it = meta["iter"]
        self.pool = None


@torch.no_grad()
def measure_lazy(model, ctrl, cfg: GateTrainConfig, seed: int = 10_000, n_images: int | None = None,
                 sched: NoiseSchedule | None = None) -> dict:
    """Lazy ratio of real thresholded sampling on held-out seeds and labels."""
    n_images = n_images or cfg.calib_images
    sched = sched or NoiseSchedule.respaced(cfg.num_steps)
    g = _gen(cfg.seed, "measure", seed)
    labels = torch.randint(0, model.config.num_classes, (n_images,), generator=g)
    ro = rollout(model, ctrl, sched, labels, [seed + j for j in range(n_images)], cfg.cfg_scale, record_caches=False)
    s = ro.skips.float()
    return {"lazy_ratio": float(s.mean()), "attn": float(s[:, :, 0].mean()), "ffn": float(s[:, :, 1].mean())}


def calibrate_threshold(model, ctrl, cfg: GateTrainConfig, target: float, rounds: int = 12,
                        sched: NoiseSchedule | None = None) -> tuple[float, dict]:
    """Search one shared threshold, in logit space, so real sampling skips `target` of calls.
    Returns it with its measurement on the calibration images.

    Logit space because trained gates are often far from 0.5: a probability bisection would
    never resolve thresholds like 1 - 1e-9.
    """
    # Start at 0.5, where budget-mode training's dual variable already aimed the gates, and widen
    # the step from there: a fixed [-30, 30] bracket spent its first rounds far from the answer.
    # The walk looks at half the images; the search near the answer at all of them (half of them
    # alone generalised worse to fresh seeds: trained gates crowd the threshold, where the ratio
    # is steep), and its measurement is the one returned.
    tried = {}

    def ratio(logit: float, n_images: int) -> float:
        thr = 1.0 / (1.0 + math.exp(-logit))
        ctrl.set_config(threshold_attn=thr, threshold_ffn=thr)
        tried[logit, n_images] = (thr, measure_lazy(model, ctrl, cfg, sched=sched, n_images=n_images))
        return tried[logit, n_images][1]["lazy_ratio"]

    half = max(2, cfg.calib_images // 2)
    near, _ = search_increasing(lambda x: ratio(x, half), target, -30.0, 30.0, 0.0, 1.0, rounds, tol=0.02)
    logit, _ = search_increasing(lambda x: ratio(x, cfg.calib_images), target, -30.0, 30.0, near, 0.25, rounds,
                                 tol=0.005, slope=_local_slope(tried, half, target))
    thr, got = tried[logit, cfg.calib_images]
    ctrl.set_config(threshold_attn=thr, threshold_ffn=thr)
    return thr, got


def _local_slope(tried: dict, n_images: int, target: float) -> float | None:
    """d ratio / d logit between the walk's tries on either side of the target, nearest first:
    it lets the search on all images start with a Newton step instead of walking again."""
    pts = sorted((x, got["lazy_ratio"]) for (x, n), (_, got) in tried.items() if n == n_images)
    below = [p for p in pts if p[1] < target]
    above = [p for p in pts if p[1] >= target]
    if not below or not above:
        return None
    (a, fa), (b, fb) = below[-1], above[0]
    return (fb - fa) / (b - a) if b > a and fb > fa else None


def train_gates(model, cfg: GateTrainConfig, dataset=None, resume: bool = False, progress: bool = True,
                noise_schedule: NoiseSchedule | None = None):
    """Fit the gates of `model` (attached if absent). Writes gates + summary on rank 0. `noise_schedule`:
    roll out on these N steps instead of lazydit's respaced DDIM (not in placement mode)."""
    # Training knows no integration: a bare diffusers DiT is wrapped a tier up, where both meet.
    if type(model).__name__ == "DiTTransformer2DModel":
        raise ValueError("train_gates takes lazydit's models; train a bare DiTTransformer2DModel with "
                         "lazydit.train.diffusers_gates.train_transformer_gates(transformer, cfg)")
    if type(model).__module__.startswith("diffusers.") and type(model).__name__ != "PixArtTransformer2DModel":
        raise ValueError(f"train_gates drives lazydit's own class-conditional sampler; for a {type(model).__name__} fit "
                         f"the pipeline: lazydit.train.diffusers_gates.fit_pipeline(pipe, cfg), or "
                         f"lazydit train-gates --model PIPELINE_DIR --target-lazy R")
    if noise_schedule is not None and cfg.train_mode == "placement":
        raise ValueError("placement mode searches on lazydit's own sampler; give no noise schedule, "
                         "or use mode onpolicy")
    trainer = GateTrainer(model, cfg, dataset, noise_schedule=noise_schedule)
    if cfg.train_mode == "placement":
        return _run_placement_search(model, trainer.ctrl, cfg, resume, progress)
    # A resumed run must rebuild the same pool, so checkpoints sit on rollout boundaries.
    ckpt_every = max(cfg.rollout_every, cfg.ckpt_every // cfg.rollout_every * cfg.rollout_every)
    ckpt = os.path.join(cfg.out_dir, "checkpoint.safetensors")
    if resume:
        trainer.load(ckpt)
    main = dist.rank() == 0
    if main:
        os.makedirs(cfg.out_dir, exist_ok=True)
        write_json(os.path.join(cfg.out_dir, "train_config.json"), asdict(cfg))
    log = open_run_log(os.path.join(cfg.out_dir, "log.jsonl"), trainer.it, "iter") if main else None
    if progress and main and trainer.memory:
        print(f"rollout memory: about {trainer.memory / 2**30:.2f} GiB per rank", flush=True)
    bar = tqdm(total=cfg.iters, initial=trainer.it, desc=f"gates {cfg.train_mode}", disable=not (progress and main))
    t0 = time.perf_counter()
    while trainer.it < cfg.iters:
        rec = trainer.step()
        bar.update(1)
        bar.set_postfix(mse=f"{rec['mse']:.2e}", lazy=f"{rec['lazy_est']:.2f}", rho=f"{rec['rho_attn']:.1e}")
        if log:
            log.write(json.dumps(rec) + "\n")
        if trainer.it % ckpt_every == 0 and trainer.it < cfg.iters:
            dist.barrier()
            if main:
                trainer.save(ckpt)
                log.flush()
    bar.close()
    seconds = time.perf_counter() - t0
    ctrl = trainer.ctrl
    if not bool(torch.isfinite(ctrl.attn).all() and torch.isfinite(ctrl.ffn).all()):
        raise ValueError("gate training diverged (NaN or inf gate weights); nothing written: lower --lr or rho, "
                         "and check the dataset for NaN")
    if cfg.target_lazy is not None and cfg.calibrate:
        _, achieved = calibrate_threshold(model, ctrl, cfg, cfg.target_lazy, sched=trainer.sched)
    else:
        achieved = measure_lazy(model, ctrl, cfg, sched=trainer.sched)
    summary = {"achieved": achieved, "target_lazy": cfg.target_lazy, "iters": cfg.iters,
               "train_seconds": seconds, "seconds_per_iter": seconds / max(1, cfg.iters - 0),
               "thresholds": {"attn": ctrl.config.threshold_attn, "ffn": ctrl.config.threshold_ffn},
               "world_size": dist.world_size()}
    if main:
        save_gates(ctrl, os.path.join(cfg.out_dir, "gates.safetensors"),
                   extra={"train_config": asdict(cfg), "achieved": achieved,
                          "step_weights": [round(float(w), 4) for w in trainer.weights]})
        write_json(os.path.join(cfg.out_dir, "summary.json"), summary)
        log.close()
    return ctrl, summary


def _run_placement_search(model, ctrl, cfg: GateTrainConfig, resume: bool, progress: bool, sample=None,
                          extra: dict | None = None):
    """Placement mode: a search of a few minutes, no iterations and no checkpoint to resume.
    `sample`: the search's image source (see `search_placements`); `extra`: more gate-file metadata."""
    from ..core.lazy.stats import LazyStats
    from .placement_search import search_placements
    if resume:
        raise ValueError("placement mode has no checkpoints to resume; run it again without --resume")
    found = search_placements(model, ctrl, cfg, progress=progress and dist.rank() == 0, sample=sample)
    # A fixed skip schedule: the ratio is the mask's over the sites that exist, no need to sample it.
    mask = LazyStats(ctrl.forced[..., None], cfg.num_steps, ctrl.kinds, ctrl.present)
    achieved = {"lazy_ratio": mask.ratio(), "attn": mask.ratio("attn"), "ffn": mask.ratio("ffn")}
    summary = {"achieved": achieved, "target_lazy": cfg.target_lazy, "mode": "placement", **found,
               "train_seconds": found["search_seconds"], "world_size": dist.world_size()}
    if dist.rank() == 0:
        os.makedirs(cfg.out_dir, exist_ok=True)
        write_json(os.path.join(cfg.out_dir, "train_config.json"), asdict(cfg))
        save_gates(ctrl, os.path.join(cfg.out_dir, "gates.safetensors"),
                   # "schedule_search": the metadata key gate files have always carried
                   extra={"train_config": asdict(cfg), "achieved": achieved, "schedule_search": found, **(extra or {})})
        write_json(os.path.join(cfg.out_dir, "summary.json"), summary)
    return ctrl, summary
