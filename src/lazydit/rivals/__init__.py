"""The methods lazy sampling is measured against, on lazydit's own harness: static schedules
(`baselines`: FORA, Learning-to-Cache), the methods of one frontier setting (`methods`), and
diffusers' own cache hooks on the same model (`diffusers_hooks`, `diffusers_rivals`, fitted to a
MACs target by `diffusers_calibration`). Harnesses that run them live in `lazydit.eval`."""
