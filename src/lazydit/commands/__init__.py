"""One module per `lazydit` subcommand (`lazydit train-gates` is `train_gates.py`), each holding
that command's `Config` (one field per flag, see `lazydit.cli_config`) and `run(cfg)`.

`options.py` declares the option groups several commands share (single options are in
`lazydit.flags`) and `harness.py` the comparison harness
of compare, frontier and demo; neither is a command. Only the parser (`lazydit.cli`) imports a
command module, and it does so on first use of that subcommand.
"""
