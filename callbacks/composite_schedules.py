"""Schedules built from other schedules: a linear warm-up in front, or several in sequence."""

import keras
from keras import ops

from callbacks.schedule_math import (check_non_negative, check_positive, deserialize, evaluate,
                                     float_step, serialize)


@keras.saving.register_keras_serializable(package="efficient_learning")
class Warmup(keras.optimizers.schedules.LearningRateSchedule):
    """A linear warm-up in front of a schedule or a constant learning rate.

    For `t < warmup_steps` the rate rises linearly from `start_factor · schedule(0)` to
    `schedule(0)`; from then on it is `schedule(t − warmup_steps)`, so the wrapped schedule
    runs in full after the warm-up. This equals PyTorch's
    `SequentialLR([LinearLR(start_factor, total_iters=warmup_steps), scheduler],
    milestones=[warmup_steps])`, and also allows `start_factor=0`.

    Args:
        schedule: a `LearningRateSchedule` or a float.
        warmup_steps: the length of the warm-up in steps.
        start_factor: the fraction of `schedule(0)` at step 0.
        name: the schedule's name.

    Example:

    ```python
    schedule = Warmup(CosineAnnealing(1e-3, t_max=9000), warmup_steps=1000)
    ```
    """

    def __init__(self, schedule, warmup_steps, start_factor=0.0, name="Warmup"):
        super().__init__()
        check_positive("warmup_steps", warmup_steps)
        check_non_negative("start_factor", start_factor)
        self.schedule = schedule
        self.warmup_steps = warmup_steps
        self.start_factor = start_factor
        self.name = name

    def __call__(self, step):
        step = float_step(step)
        target = evaluate(self.schedule, 0)
        fraction = ops.minimum(step / self.warmup_steps, 1.0)
        warming = target * (self.start_factor + (1.0 - self.start_factor) * fraction)
        after = evaluate(self.schedule, ops.maximum(step - self.warmup_steps, 0.0))
        return ops.where(step < self.warmup_steps, warming, after)

    def get_config(self):
        return {"schedule": serialize(self.schedule), "warmup_steps": self.warmup_steps,
                "start_factor": self.start_factor, "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**{**config, "schedule": deserialize(config["schedule"])})


@keras.saving.register_keras_serializable(package="efficient_learning")
class SequentialSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Runs schedules one after another, as `torch.optim.lr_scheduler.SequentialLR`.

    Schedule `i + 1` takes over at `milestones[i]` and starts from its own step 0.

    Args:
        schedules: `LearningRateSchedule`s or floats, one more than `milestones`.
        milestones: increasing steps at which the next schedule takes over.
        name: the schedule's name.

    Example:

    ```python
    schedule = SequentialSchedule([1e-3, CosineAnnealing(1e-3, t_max=5000)], milestones=[2000])
    ```
    """

    def __init__(self, schedules, milestones, name="SequentialSchedule"):
        super().__init__()
        milestones = [int(milestone) for milestone in milestones]
        if len(schedules) != len(milestones) + 1:
            raise ValueError(f"give one milestone fewer than schedules; got {len(schedules)} "
                             f"schedules and {len(milestones)} milestones")
        if any(b <= a for a, b in zip(milestones, milestones[1:])) or (milestones and milestones[0] < 1):
            raise ValueError(f"milestones must be increasing steps >= 1; got {milestones}")
        self.schedules = list(schedules)
        self.milestones = milestones
        self.name = name

    def __call__(self, step):
        step = float_step(step)
        value = evaluate(self.schedules[0], step)
        for milestone, schedule in zip(self.milestones, self.schedules[1:]):
            local_step = ops.maximum(step - milestone, 0.0)
            value = ops.where(step >= milestone, evaluate(schedule, local_step), value)
        return value

    def get_config(self):
        return {"schedules": [serialize(schedule) for schedule in self.schedules],
                "milestones": list(self.milestones), "name": self.name}

    @classmethod
    def from_config(cls, config):
        schedules = [deserialize(schedule) for schedule in config["schedules"]]
        return cls(**{**config, "schedules": schedules})
