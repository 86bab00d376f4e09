"""Cosine annealing, once or with warm restarts: PyTorch's `CosineAnnealingLR` and
`CosineAnnealingWarmRestarts`."""

import keras
from keras import ops

from callbacks.schedule_math import check_non_negative, check_positive, cosine_fraction, float_step

# Cycles are tabulated up to this many steps, far beyond any training run.
_TABLE_STEPS = 2**31


@keras.saving.register_keras_serializable(package="efficient_learning")
class CosineAnnealing(keras.optimizers.schedules.LearningRateSchedule):
    """Anneals from `initial_learning_rate` to `eta_min` along a half cosine over `t_max` steps.

    Equal to `torch.optim.lr_scheduler.CosineAnnealingLR` for steps `0..t_max`; afterwards it
    holds `eta_min` (PyTorch's would climb back up).

    Args:
        initial_learning_rate: the learning rate at step 0.
        t_max: the number of steps to reach `eta_min`.
        eta_min: the final learning rate.
        name: the schedule's name.

    Example:

    ```python
    schedule = CosineAnnealing(0.1, t_max=epochs * steps_per_epoch, eta_min=1e-4)
    ```
    """

    def __init__(self, initial_learning_rate, t_max, eta_min=0.0, name="CosineAnnealing"):
        super().__init__()
        check_positive("t_max", t_max)
        check_non_negative("eta_min", eta_min)
        self.initial_learning_rate = initial_learning_rate
        self.t_max = t_max
        self.eta_min = eta_min
        self.name = name

    def __call__(self, step):
        remaining = self.t_max - ops.minimum(float_step(step), self.t_max)
        height = self.initial_learning_rate - self.eta_min
        return self.eta_min + height * cosine_fraction(remaining, self.t_max)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "t_max": self.t_max,
                "eta_min": self.eta_min, "name": self.name}


@keras.saving.register_keras_serializable(package="efficient_learning")
class CosineAnnealingWarmRestarts(keras.optimizers.schedules.LearningRateSchedule):
    """Cosine annealing that restarts at `initial_learning_rate`, as torch's SGDR scheduler.

    The first cycle lasts `t_0` steps and each next one `t_mult` times longer (Loshchilov &
    Hutter, "SGDR", 2017). Equal to `torch.optim.lr_scheduler.CosineAnnealingWarmRestarts`
    stepped once per update.

    Args:
        initial_learning_rate: the learning rate at the start of every cycle.
        t_0: the length of the first cycle in steps (an integer >= 1).
        t_mult: the growth factor of the cycle length (an integer >= 1).
        eta_min: the learning rate at the end of every cycle.
        name: the schedule's name.

    Example:

    ```python
    schedule = CosineAnnealingWarmRestarts(0.05, t_0=10 * steps_per_epoch, t_mult=2)
    ```
    """

    def __init__(self, initial_learning_rate, t_0, t_mult=1, eta_min=0.0,
                 name="CosineAnnealingWarmRestarts"):
        super().__init__()
        if int(t_0) != t_0 or t_0 < 1:
            raise ValueError(f"t_0 must be an integer >= 1; got {t_0!r}")
        if int(t_mult) != t_mult or t_mult < 1:
            raise ValueError(f"t_mult must be an integer >= 1; got {t_mult!r}")
        check_non_negative("eta_min", eta_min)
        self.initial_learning_rate = initial_learning_rate
        self.t_0 = int(t_0)
        self.t_mult = int(t_mult)
        self.eta_min = eta_min
        self.name = name
        # Cycle starts and lengths as exact integers, looked up per step instead of the
        # closed form's float logarithm, which can land in the wrong cycle at a restart.
        self._cycle_starts, self._cycle_lengths = [0], [self.t_0]
        while self.t_mult > 1 and self._cycle_starts[-1] < _TABLE_STEPS:
            self._cycle_starts.append(self._cycle_starts[-1] + self._cycle_lengths[-1])
            self._cycle_lengths.append(self._cycle_lengths[-1] * self.t_mult)

    def __call__(self, step):
        step = float_step(step)
        if self.t_mult == 1:
            length = float(self.t_0)
            position = step - ops.floor(step / length) * length
        else:
            starts = ops.convert_to_tensor(self._cycle_starts[1:], "float32")
            cycle = ops.sum(ops.cast(step >= starts, "int32"))
            length = ops.take(ops.convert_to_tensor(self._cycle_lengths, "float32"), cycle)
            position = step - ops.take(ops.convert_to_tensor(self._cycle_starts, "float32"), cycle)
        height = self.initial_learning_rate - self.eta_min
        return self.eta_min + height * cosine_fraction(length - position, length)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "t_0": self.t_0,
                "t_mult": self.t_mult, "eta_min": self.eta_min, "name": self.name}
