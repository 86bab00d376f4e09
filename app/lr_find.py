"""The learning-rate range test of `python -m app lr-find` and of `schedule.lr: auto` in `fit`.

The sweep trains a fresh copy of the configured model (same seed, constant learning rate)
on shuffled training batches only, then reads a suggestion off the loss curve:

```python
finder = find_learning_rate(config, dataset)   # a fitted callbacks.LRFinder
write_lr_find(finder, run_dir)                 # lr_find.csv, lr_find.png, lr_find.json
```
"""

import csv
import dataclasses

import numpy as np

from app.arrays import select
from app.backend import set_random_seed
from app.config import ScheduleConfig
from app.errors import UserError
from app.rundir import LR_FIND_CSV, LR_FIND_JSON, LR_FIND_PNG

DEFAULT_SWEEP = {"min_lr": 1e-7, "max_lr": 10.0, "steps": 100, "rule": "valley"}


def find_learning_rate(config, dataset, min_lr=DEFAULT_SWEEP["min_lr"],
                       max_lr=DEFAULT_SWEEP["max_lr"], steps=DEFAULT_SWEEP["steps"],
                       rule=DEFAULT_SWEEP["rule"]):
    """Runs the LR range test for `config` on `dataset`'s training split.

    Batches have the run's effective size (`batch_size · accumulation_steps`), so the
    suggestion fits the updates that training will make.

    Returns:
        The `callbacks.LRFinder` after the sweep.

    Raises:
        UserError: if the sweep diverged before it could suggest anything.
    """
    from app.engine import build_compiled_model
    from app.feeding import evaluation_inputs
    from callbacks import LRFinder

    batch_size = config.training.batch_size * config.training.accumulation_steps
    sweep_config = dataclasses.replace(
        config, schedule=ScheduleConfig(lr=min_lr),
        # The finder sets the rate before every batch.
        training=dataclasses.replace(config.training, accumulation_steps=1,
                                     accumulation_schedule=None, steps_per_execution=1),
    )
    set_random_seed(config.seed)
    model = build_compiled_model(sweep_config, dataset)
    x, y = _sweep_batches(dataset, steps * batch_size, config.seed)
    finder = LRFinder(min_lr=min_lr, max_lr=max_lr, num_steps=steps, suggestion=rule)
    model.fit(**evaluation_inputs(x, y, config, batch_size), epochs=1, shuffle=False,
              callbacks=[finder], verbose=config.training.verbose)
    if finder.suggestion is None:
        raise UserError(f"the loss diverged within {len(finder.losses)} steps of the LR sweep, "
                        f"before it could suggest a rate; lower --min-lr (now {min_lr:g})")
    return finder


def write_lr_find(finder, directory):
    """Writes `lr_find.csv`, `lr_find.png` and `lr_find.json`; returns the JSON's content."""
    from app.reporting import write_json

    with open(directory / LR_FIND_CSV, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "learning_rate", "loss", "smoothed_loss"])
        for step, row in enumerate(zip(finder.learning_rates, finder.losses,
                                       finder.smoothed_losses)):
            writer.writerow([step, *(repr(float(value)) for value in row)])
    finder.plot(directory / LR_FIND_PNG)
    summary = {
        "suggestion": finder.suggestion,
        "rule": finder.suggestion_rule,
        "suggestions": finder.suggestions(),
        "sweep": {"min_lr": finder.min_lr, "max_lr": finder.max_lr,
                  "steps_planned": finder.num_steps, "steps_run": len(finder.losses),
                  "stopped_on_divergence": finder.stopped_on_divergence},
    }
    write_json(summary, directory / LR_FIND_JSON)
    return summary


def _sweep_batches(dataset, samples, seed):
    """`samples` training examples: shuffled passes over the training split, repeated
    (still unread if the data are streamed)."""
    rng = np.random.default_rng(seed)
    passes = -(-samples // len(dataset.x_train))
    order = np.concatenate([rng.permutation(len(dataset.x_train)) for _ in range(passes)])
    order = order[:samples]
    return select(dataset.x_train, order), dataset.y_train[order]
