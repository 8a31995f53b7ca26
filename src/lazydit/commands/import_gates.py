"""`lazydit import-gates`: gate weights trained by the official LazyDiT code -> a lazydit gate file
(`integrations.official_gates`)."""
from __future__ import annotations

from dataclasses import dataclass

from ..io import check_output_file
from .. import flags
from ..flags import option


@dataclass(kw_only=True)
class Config:
    official: str = option(positional=True,
                           help="official checkpoint (torch file, read weights-only; or .safetensors)")
    out: str = flags.out_file(help="gate file to write (.safetensors)")
    model: str = flags.model(help="zoo name of the model the gates were trained on, e.g. DiT-XL/2")
    steps: int | None = flags.steps(None, positive=True,
                                      help="sampling steps; needed only for a file with one gate per block for all "
                                           "steps")
    threshold_attn: float = option(0.5, help="the official --attn_threshold")
    threshold_ffn: float = option(0.5, help="the official --mlp_threshold")


def run(cfg: Config) -> None:
    check_output_file(cfg.out)
    from ..integrations.official_gates import import_official_gates
    s = import_official_gates(cfg.official, cfg.out, cfg.model, cfg.steps, cfg.threshold_attn, cfg.threshold_ffn)
    print(f"gate file written to {cfg.out}: {s['arch']}, {s['steps']} steps, depth {s['depth']}, "
          f"width {s['hidden_size']} (official index i -> sampling step {s['steps'] - 1} - i)")
