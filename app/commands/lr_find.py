"""`python -m app lr-find`: the LR range test in its own run directory `<name>-lr-find-<time>/`.

```python
run_dir, summary = run_lr_find(load_config(), min_lr=1e-7, max_lr=10, steps=100, rule="valley")
summary["suggestion"]
```
"""

import time

from app.commands.arguments import BACKEND, CONFIGURED, int_at_least, positive_float, prepare
from app.config.schema import LR_FINDER_RULES
from app.errors import UserError
from app.lr_find import DEFAULT_SWEEP


def add_parser(commands):
    parser = commands.add_parser(
        "lr-find", parents=[BACKEND, CONFIGURED], help="suggest a learning rate (range test)",
        description="Sweep the learning rate exponentially on training batches of the "
                    "configured model, plot the loss against it and suggest a rate for "
                    "schedule.lr. Writes runs/<name>-lr-find-<timestamp>/.",
    )
    parser.add_argument("--min-lr", type=positive_float, default=DEFAULT_SWEEP["min_lr"],
                        help="first rate of the sweep (default: %(default)g)")
    parser.add_argument("--max-lr", type=positive_float, default=DEFAULT_SWEEP["max_lr"],
                        help="last rate of the sweep (default: %(default)g)")
    parser.add_argument("--steps", type=int_at_least(5), default=DEFAULT_SWEEP["steps"],
                        help="updates in the sweep (default: %(default)s)")
    parser.add_argument("--rule", choices=LR_FINDER_RULES, default=DEFAULT_SWEEP["rule"],
                        help="how the suggestion is read off the curve (default: %(default)s)")
    parser.set_defaults(handler=handle)


def handle(arguments):
    from app.rundir import LR_FIND_PNG

    if not arguments.min_lr < arguments.max_lr:
        raise UserError(f"--min-lr must be below --max-lr; got {arguments.min_lr:g} and "
                        f"{arguments.max_lr:g}")
    config = prepare(arguments)
    run_dir, summary = run_lr_find(config, arguments.min_lr, arguments.max_lr, arguments.steps,
                                   arguments.rule)
    others = ", ".join(f"{rule} {value:.3g}" for rule, value in summary["suggestions"].items()
                       if value is not None)
    print(f"suggested learning rate ({summary['rule']}): {summary['suggestion']:.3g}  "
          f"[{others}]")
    print(f"use it:  python -m app fit --set schedule.lr={summary['suggestion']:.3g}  "
          f"(or schedule.lr=auto)")
    print(f"curve:   {run_dir / LR_FIND_PNG}")
    return 0


def run_lr_find(config, min_lr, max_lr, steps, rule):
    """Runs the sweep and writes `<name>-lr-find-<time>/` with its config, curve and suggestions.

    Returns:
        `(run_dir, summary)` where `summary` is what `lr_find.json` holds.
    """
    from app.config import dump_config
    from app.data import load_dataset
    from app.engine import check_model_fits_data, resolve_config
    from app.lr_find import find_learning_rate, write_lr_find
    from app.rundir import CONFIG_FILE, Staging, default_run_name, plan_run_directory

    dataset = load_dataset(config.data, seed=config.seed)
    check_model_fits_data(config.model, dataset)
    name = f"{default_run_name(config)}-lr-find"
    config = resolve_config(config, name)
    run_dir = plan_run_directory(config.output, name)
    with Staging(run_dir, renumber=config.output.timestamp) as staging:
        started = time.perf_counter()
        (staging.folder / CONFIG_FILE).write_text(dump_config(config))
        finder = find_learning_rate(config, dataset, min_lr, max_lr, steps, rule)
        summary = write_lr_find(finder, staging.folder)
        summary["seconds"] = time.perf_counter() - started
        path = staging.commit()
    return path, summary
