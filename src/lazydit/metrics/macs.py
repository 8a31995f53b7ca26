"""Multiply-accumulates (MACs) of DiT and Large-DiT, computed per module from shapes.

Two conventions:
- "linear": only nn.Linear / nn.Conv2d MACs (bias adds not counted), which is what thop
  (Zhu 2022, the counter LazyDiT cites) sees; it never sees the functional QK^T and AV matmuls.
  This is the paper's TMACs column.
- "full": linear plus the attention matmuls QK^T and AV (2 * T^2 * D per attention call). This
  is the DiT paper's "Gflops" (fvcore counts one multiply-add as one flop): DiT-XL/2 at 256 px
  gives 118.6 G per forward here, exactly the DiT paper's figure.
Norms, activations, softmax, rotary embeddings and residual adds are elementwise and counted in
neither (well under 0.1% of a DiT forward).

Every number is per model row: one sample of the model batch, one forward. Under classifier-free
guidance each image costs two rows (cond + null) per step. The LazyDiT paper's TMACs are per image
WITHOUT the CFG doubling: DiT-XL/2, 256 px, DDIM-50 = 5.72 TMACs = 50 x 114.4 GMACs ("linear").
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch

from ..core.models import EMBEDDED, LARGE_DIT_ZOO, dit_config, embedded_config, large_dit_config, model_names

CONVENTIONS = ("linear", "full")
FREQ_EMBED = 256        # width of the sinusoidal timestep features fed to t_embedder.mlp[0]
VAE_DOWNSAMPLE = 8      # SD VAE: 256 px images are 32x32x4 latents
LATENT_CHANNELS = 4


@dataclass(frozen=True)
class ModuleMacs:
    """MACs per model row of one forward pass, split by what lazy sampling can skip."""

    attn: int          # one attention module call (one layer)
    ffn: int           # one feed-forward module call (one layer)
    always: int        # never skipped: embedders, every adaLN modulation, the final layer
    gate: int          # one lazy gate evaluation, sum over tokens of Z @ w: T * D
    depth: int         # layers, each with one attn and one ffn call
    convention: str

    @property
    def forward(self) -> int:
        return self.always + self.depth * (self.attn + self.ffn)

    def to_dict(self) -> dict:
        return {**asdict(self), "forward": self.forward}


def _is_large_dit(cfg) -> bool:
    return hasattr(cfg, "ffn_hidden")  # LargeDiTConfig (SwiGLU width rule); DiTConfig has mlp_ratio


def module_macs(cfg, convention: str = "linear") -> ModuleMacs:
    """Per-module MACs of a DiTConfig or LargeDiTConfig (duck-typed on their fields)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown MACs convention {convention!r}; choose linear or full")
    D, p, C = cfg.hidden_size, cfg.patch_size, cfg.in_channels
    T = (cfg.input_size // p) ** 2
    C_out = 2 * C if cfg.learn_sigma else C
    qk_av = 2 * T * T * D if convention == "full" else 0  # QK^T and AV over all heads
    if _is_large_dit(cfg):
        cond = getattr(cfg, "cond_size", min(D, 1024))  # t/y embeddings and adaLN inputs are this wide
        kv = getattr(cfg, "kv_heads", cfg.num_heads) * (D // cfg.num_heads)
        attn = T * (D * D + 2 * D * kv + D * D) + qk_av   # wq, wk, wv, wo, all bias-free
        ffn = T * 3 * D * cfg.ffn_hidden                   # SwiGLU w1, w3: D->H; w2: H->D
        embed = T * p * p * C * D                          # x_embedder Linear(p*p*C, D)
    else:
        cond = D
        attn = T * 4 * D * D + qk_av                       # qkv (D->3D) and proj (D->D)
        ffn = T * 2 * D * int(D * cfg.mlp_ratio)           # fc1, fc2
        embed = T * C * p * p * D                          # x_embedder Conv2d(k=p, stride=p)
    t_embed = FREQ_EMBED * cond + cond * cond              # t_embedder.mlp[0], mlp[2]; y is a lookup
    ada = cfg.depth * cond * 6 * D                         # per-block adaLN_modulation Linear(cond, 6D)
    final = cond * 2 * D + T * D * p * p * C_out           # final adaLN Linear(cond, 2D) + linear
    return ModuleMacs(attn=attn, ffn=ffn, always=embed + t_embed + ada + final, gate=T * D,
                      depth=cfg.depth, convention=convention)


def generation_macs(mm: ModuleMacs, steps: int, cfg: bool = False) -> int:
    """MACs per image of a full-compute generation; cfg=True counts the two CFG rows."""
    return (2 if cfg else 1) * steps * mm.forward


def ideal_lazy_macs(mm: ModuleMacs, steps: int, ratio: float, ffn_ratio: float | None = None,
                    gates: bool = True, cfg: bool = False) -> float:
    """MACs per image when a fraction `ratio` of module calls is skipped (ffn_ratio: a separate
    fraction for the feed-forward). gates=True adds the learned gates, evaluated for every layer
    and module at every step k >= 1 (a forced static mask evaluates none)."""
    r_f = ratio if ffn_ratio is None else ffn_ratio
    for r in (ratio, r_f):
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"lazy ratio must be in [0, 1], got {r}")
    per_row = (steps * mm.always + steps * mm.depth * ((1 - ratio) * mm.attn + (1 - r_f) * mm.ffn)
               + (gate_evaluations(steps, mm.depth) * mm.gate if gates else 0))
    return (2 if cfg else 1) * per_row


def gate_evaluations(steps: int, depth: int) -> int:
    """Gate scores computed per row in one hard-mode generation: at every step with a cache."""
    return max(steps - 1, 0) * depth * 2


def counted_macs(mm: ModuleMacs, steps: int, rows: int, computed_attn: int, computed_ffn: int,
                 gates: bool = True, correction_rank: int = 0) -> float:
    """MACs per row actually spent by `rows` rows over `steps` steps that computed
    `computed_attn` attention and `computed_ffn` feed-forward calls in all. A skipped call
    costs 2 r D per token under an input correction of rank r (`lazydit.core.lazy.correction`)."""
    if rows < 1:
        raise ValueError("no rows to count MACs over")
    skipped = rows * steps * mm.depth * 2 - computed_attn - computed_ffn
    total = (rows * steps * mm.always + computed_attn * mm.attn + computed_ffn * mm.ffn
             + (rows * gate_evaluations(steps, mm.depth) * mm.gate if gates else 0)
             + skipped * 2 * correction_rank * mm.gate)
    return total / rows


def controller_costs(ctrl) -> dict:
    """lazy_macs/counted_macs keywords for what a controller spends besides its modules: gate
    scores (none under a fixed schedule or a policy) and an input correction."""
    return {"gates": ctrl.forced is None and ctrl.policy is None,
            "correction_rank": ctrl.correction.rank if ctrl.correction is not None else 0}


def lazy_macs(skips: torch.Tensor, mm: ModuleMacs, steps_run: int | None = None, gates: bool = True,
              correction_rank: int = 0) -> float:
    """MACs per row actually spent, from LazyStats.skips (N, L, 2, B) bool (True = skipped).

    Per row is per image without the CFG doubling (the paper's convention); under CFG the
    rows are cond + null halves, so MACs per image with CFG = 2 * this. gates=False for a
    forced mask, where the controller computes no gate score.
    """
    if skips.dim() != 4 or skips.shape[1] != mm.depth or skips.shape[2] != 2:
        raise ValueError(f"skips must have shape (N, {mm.depth}, 2, B), got {tuple(skips.shape)}")
    n = skips.shape[0] if steps_run is None else steps_run
    done = ~skips[:n].bool()  # (n, L, 2, B) True = computed
    return counted_macs(mm, n, skips.shape[3], int(done[:, :, 0].sum()), int(done[:, :, 1].sum()), gates,
                        correction_rank)


def zoo_config(name: str, **overrides):
    """The config of a zoo model without building its weights (DiT-XL/2 would take 2.7 GB)."""
    if name not in model_names():
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(model_names())}")
    kw = {k: v for k, v in overrides.items() if v is not None}
    if name == EMBEDDED:
        return replace(embedded_config(), **kw)
    return large_dit_config(name, **kw) if name in LARGE_DIT_ZOO else dit_config(name, **kw)


def is_latent(cfg) -> bool:
    """4-channel models sample SD-VAE latents; 1- and 3-channel models sample pixels."""
    return cfg.in_channels == LATENT_CHANNELS


def input_size_for_pixels(cfg, pixels: int) -> int:
    """The model input side for an image of `pixels` px: /8 through the VAE for latent models."""
    if not is_latent(cfg):
        return pixels
    if pixels % VAE_DOWNSAMPLE:
        raise ValueError(f"image size {pixels} px is not a multiple of the VAE's {VAE_DOWNSAMPLE}x downsampling")
    return pixels // VAE_DOWNSAMPLE


@dataclass
class MacsConfig:
    model: str = "DiT-XL/2"         # zoo name
    image_size: int = 256           # in PIXELS (latent models: the VAE output side)
    steps: int = 50                 # sampling steps N
    lazy_ratio: float | None = None  # report the ideal MACs at this uniform lazy ratio too
    gates: bool = True              # count the learned gates' cost in the lazy figure


def ddim_steps_for_fraction(num_steps: int, macs_fraction: float) -> int:
    """DDIM steps whose cost is `macs_fraction` of a `num_steps` generation (at least 1)."""
    if not 0.0 < macs_fraction <= 1.0:
        raise ValueError(f"MACs fraction must be in (0, 1], got {macs_fraction}")
    return max(1, round(num_steps * macs_fraction))


def ddim_steps_for_macs(macs: float, per_step: float) -> int:
    """DDIM steps whose full-compute cost is closest to `macs` (same units and rows as per_step)."""
    if per_step <= 0:
        raise ValueError("per-step MACs must be positive")
    return max(1, round(macs / per_step))


def macs_report(c: MacsConfig) -> dict:
    """Everything `lazydit macs` prints, per convention, in MACs (not G/T)."""
    base = zoo_config(c.model)
    cfg = replace(base, input_size=input_size_for_pixels(base, c.image_size))
    if c.steps < 1:
        raise ValueError(f"steps must be >= 1, got {c.steps}")
    out = {"config": asdict(c), "input_size": cfg.input_size, "tokens": (cfg.input_size // cfg.patch_size) ** 2}
    for conv in CONVENTIONS:
        mm = module_macs(cfg, conv)
        row = {"modules": mm.to_dict(),
               "generation_no_cfg": generation_macs(mm, c.steps, cfg=False),
               "generation_cfg": generation_macs(mm, c.steps, cfg=True)}
        if c.lazy_ratio is not None:
            lazy = ideal_lazy_macs(mm, c.steps, c.lazy_ratio, gates=c.gates)
            row.update(lazy_no_cfg=lazy, lazy_cfg=2 * lazy,
                       ddim_matched_steps=ddim_steps_for_macs(lazy, mm.forward))
        out[conv] = row
    return out


def format_report(rep: dict) -> str:
    c = rep["config"]
    lines = [f"{c['model']} at {c['image_size']} px: input {rep['input_size']}x{rep['input_size']}, "
             f"{rep['tokens']} tokens, {c['steps']} steps",
             f"{'':34s}{'linear (thop; paper TMACs)':>28s}{'full (+QK^T, AV)':>20s}"]

    def row(label, key, sub=False):
        vals = [(rep[k]["modules"] if sub else rep[k])[key] for k in CONVENTIONS]
        unit, suffix = next((u, s) for u, s in ((1e12, "TMACs"), (1e9, "GMACs"), (1e6, "MMACs"), (1, "MACs"))
                            if max(vals) >= u or u == 1)
        lines.append(f"{label:34s}" + "".join(f"{v / unit:>22.3f} {suffix}" for v in vals))
    row("attn call, per row", "attn", sub=True)
    row("ffn call, per row", "ffn", sub=True)
    row("always (embed/adaLN/final), row", "always", sub=True)
    row("one forward, per row", "forward", sub=True)
    row("generation / image, no CFG", "generation_no_cfg")
    row("generation / image, CFG (x2)", "generation_cfg")
    if c["lazy_ratio"] is not None:
        tag = "with gates" if c["gates"] else "no gate cost"
        row(f"lazy {c['lazy_ratio']:.0%} ({tag}), no CFG", "lazy_no_cfg")
        row(f"lazy {c['lazy_ratio']:.0%} ({tag}), CFG", "lazy_cfg")
        lines.append(f"DDIM steps at the same MACs (linear): {rep['linear']['ddim_matched_steps']}")
    lines.append("'no CFG' is the LazyDiT paper's TMACs convention (per image, one row per step).")
    return "\n".join(lines)
