"""`lazydit import-gates`: gate weights trained by the official LazyDiT code -> a lazydit gate file."""
from __future__ import annotations

from .cli_args import out_file, positive_int
from .io import check_output_file


def add_import_gates(sub):
    from .core.models import EMBEDDED
    p = sub.add_parser("import-gates", help="convert an official LazyDiT lazy-learning checkpoint into a gate file")
    p.add_argument("official", help="official checkpoint (torch file, read weights-only; or .safetensors)")
    p.add_argument("--out", type=out_file, required=True, help="gate file to write (.safetensors)")
    p.add_argument("--model", default=EMBEDDED, help="zoo name of the model the gates were trained on, e.g. DiT-XL/2")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="sampling steps; needed only for a file with one gate per block for all steps")
    p.add_argument("--threshold-attn", type=float, default=0.5, help="the official --attn_threshold")
    p.add_argument("--threshold-ffn", type=float, default=0.5, help="the official --mlp_threshold")

    def run(a):
        check_output_file(a.out)
        from .integrations.official_gates import import_official_gates
        s = import_official_gates(a.official, a.out, a.model, a.steps, a.threshold_attn, a.threshold_ffn)
        print(f"gate file written to {a.out}: {s['arch']}, {s['steps']} steps, depth {s['depth']}, "
              f"width {s['hidden_size']} (official index i -> sampling step {s['steps'] - 1} - i)")
    p.set_defaults(func=run)
