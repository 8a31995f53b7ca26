"""Which seeds each kind of work draws, so that no image is both tuned on and evaluated on.

- 0 .. 29,999: gate training batches and the DiT harness's calibration of training-free policies;
- 30,000+ and 40,000+ (+1,000 x the fitting seed): the default policy's fitting and selection images
  (`train.placement_search`), and the selection images every rival's placement is searched on;
- 50,000+: threshold calibration of diffusers' hooks on a pipeline;
- 60,000+: `scripts/forecast_coordinate.py`;
- 1,000,000+ and 2,000,000+: used by study scripts (`scripts/correction_study.py`, `reuse_study.py`,
  `gate_psnr.py`) and by evaluations before 2026-12-08, so design choices were tuned on them;
- 3,000,000+: evaluation by `compare`, `frontier` and the demo, touched by nothing else.
"""
EVAL_SEED = 3_000_000
