"""The learning-rate schedules that `schedule.name` chooses, and building one.

Each row's `build(lr, keys, lengths)` gets the rate, the row's keys with their defaults
filled in (`Derived` ones `None`), and the run's `Lengths` (which turn lengths in
`schedule.unit` into optimizer updates). Adding a schedule: its class in `callbacks/` (tested
against PyTorch), one row here and, for a key no row had before, one field of
`app.config.schema.ScheduleConfig`.

```python
schedule = build_schedule(ScheduleConfig(name="one_cycle", lr=0.01), steps_per_epoch=20,
                          epochs=30)     # callbacks.OneCycle(max_lr=0.01, total_steps=600)
```
"""

import dataclasses

from app.errors import UserError
from app.tables import REQUIRED, Derived, Row, Table

# Keras's optimizers count their updates in int32.
MAX_STEPS = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class Lengths:
    """The run's length in optimizer updates, and the conversion of configured lengths.

    Attributes:
        per_unit: updates per `schedule.unit` (updates per epoch, or 1).
        total: updates in the whole run.
        warmup: updates of the linear warm-up.
    """

    per_unit: float
    total: int
    warmup: int

    def updates(self, length):
        """A length in `schedule.unit` as a whole number of updates (at least 1)."""
        return max(1, int(round(length * self.per_unit)))

    @property
    def after_warmup(self):
        return max(1, self.total - self.warmup)


def _constant(lr, keys, lengths):
    return lr


def _step(lr, keys, lengths):
    import callbacks

    return callbacks.StepDecay(lr, lengths.updates(keys["step_size"]), keys["gamma"])


def _multistep(lr, keys, lengths):
    import callbacks

    return callbacks.MultiStepDecay(lr, [lengths.updates(m) for m in keys["milestones"]],
                                    keys["gamma"])


def _exponential(lr, keys, lengths):
    import keras

    return keras.optimizers.schedules.ExponentialDecay(lr, decay_steps=lengths.per_unit,
                                                       decay_rate=keys["gamma"])


def _cosine(lr, keys, lengths):
    import callbacks

    t_max = keys["t_max"]
    return callbacks.CosineAnnealing(
        lr, lengths.updates(t_max) if t_max is not None else lengths.after_warmup, keys["min_lr"])


def _polynomial(lr, keys, lengths):
    import callbacks

    t_max = keys["t_max"]
    return callbacks.PolynomialDecay(
        lr, lengths.updates(t_max) if t_max is not None else lengths.after_warmup, keys["power"])


def _cosine_restarts(lr, keys, lengths):
    import callbacks

    return callbacks.CosineAnnealingWarmRestarts(lr, lengths.updates(keys["t_0"]), keys["t_mult"],
                                                 keys["min_lr"])


def _cyclic(lr, keys, lengths):
    import callbacks

    down = keys["step_size_down"]
    return callbacks.CyclicLR(
        keys["min_lr"] if keys["min_lr"] is not None else lr / 10, lr,
        lengths.updates(keys["step_size"]), lengths.updates(down) if down is not None else None,
        keys["cyclic_mode"], keys["gamma"])


def _one_cycle(lr, keys, lengths):
    import callbacks

    return callbacks.OneCycle(lr, lengths.total, keys["pct_start"], keys["anneal_strategy"],
                              keys["div_factor"], keys["final_div_factor"], keys["three_phase"])


SCHEDULES = Table("schedule", "name", [
    Row("constant", _constant, {},
        {"class": "a float", "PyTorch": "–"}),
    Row("step", _step, {"step_size": REQUIRED, "gamma": 0.1},
        {"class": "`StepDecay`", "PyTorch": "`StepLR`"}),
    Row("multistep", _multistep, {"milestones": REQUIRED, "gamma": 0.1},
        {"class": "`MultiStepDecay`", "PyTorch": "`MultiStepLR`"}),
    Row("exponential", _exponential, {"gamma": 0.9},
        {"class": "`keras.optimizers.schedules.ExponentialDecay`",
         "PyTorch": "`ExponentialLR` per unit, smooth between"}),
    Row("cosine", _cosine, {"t_max": Derived("rest of the run"), "min_lr": 0.0},
        {"class": "`CosineAnnealing`", "PyTorch": "`CosineAnnealingLR`"}),
    Row("polynomial", _polynomial, {"t_max": Derived("rest of the run"), "power": 1.0},
        {"class": "`PolynomialDecay`", "PyTorch": "`PolynomialLR`"}),
    Row("cosine_restarts", _cosine_restarts, {"t_0": REQUIRED, "t_mult": 1, "min_lr": 0.0},
        {"class": "`CosineAnnealingWarmRestarts`", "PyTorch": "`CosineAnnealingWarmRestarts`"}),
    Row("cyclic", _cyclic,
        {"step_size": REQUIRED, "step_size_down": Derived("step_size"),
         "cyclic_mode": "triangular", "gamma": 1.0, "min_lr": Derived("lr/10")},
        {"class": "`CyclicLR` (`base_lr=min_lr`, `max_lr=lr`)", "PyTorch": "`CyclicLR`"}),
    Row("one_cycle", _one_cycle,
        {"pct_start": 0.3, "anneal_strategy": "cos", "div_factor": 25.0,
         "final_div_factor": 1e4, "three_phase": False},
        {"class": "`OneCycle` (`max_lr=lr`, `total_steps`=the run)", "PyTorch": "`OneCycleLR`"}),
], columns=("class", "PyTorch"), keys_heading="parameters (default)")

# Cyclic and one-cycle schedules rise from a low rate by themselves.
WARMUP_SCHEDULES = tuple(name for name in SCHEDULES.names() if name not in ("cyclic", "one_cycle"))


def build_schedule(schedule_config, steps_per_epoch, epochs):
    """The learning rate to give the optimizer: a float or a `LearningRateSchedule`.

    Lengths in `schedule_config.unit` are converted to optimizer updates here; every
    schedule advances once per update. `warmup > 0` wraps the schedule in
    `callbacks.Warmup`.

    Args:
        schedule_config: an `app.config.ScheduleConfig` whose `lr` is a number.
        steps_per_epoch: optimizer updates per epoch.
        epochs: the length of the run in epochs.
    """
    config = schedule_config
    per_unit = steps_per_epoch if config.unit == "epochs" else 1
    total = steps_per_epoch * epochs
    if total > MAX_STEPS:
        raise UserError(f"training.epochs {epochs:,} × {steps_per_epoch:,} updates per epoch is "
                        f"{total:,} updates, more than the {MAX_STEPS:,} that Keras counts "
                        "(int32); lower training.epochs")
    lengths = Lengths(per_unit=per_unit, total=max(1, total),
                      warmup=int(round(config.warmup * per_unit)))
    row = SCHEDULES.row(config.name)
    schedule = row.build(config.lr, row.resolve(config), lengths)
    if lengths.warmup > 0:
        import callbacks

        return callbacks.Warmup(schedule, lengths.warmup, config.warmup_start_factor)
    return schedule
