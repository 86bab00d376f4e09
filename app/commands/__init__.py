"""One module per command of `python -m app`.

Each module has `add_parser(commands)`, which adds its subcommand to the parser and sets
`handler` (`set_defaults(handler=...)`), and the handler, which takes the parsed arguments
and returns the exit code. The work itself is in the layers below: the training engine
(`app.engine`), the run-directory layout (`app.rundir`), tuning, distillation and export.
Adding a command: a module here and one entry in `COMMANDS`.
"""

from app.commands import (augment_preview, distill, doctor, evaluate, export, fit, info, lr_find,
                          make_dataset, prune, runs, tune)

# In the order `python -m app --help` lists them.
COMMANDS = (fit, tune, lr_find, distill, prune, doctor, evaluate, export, make_dataset,
            augment_preview, runs, info)
