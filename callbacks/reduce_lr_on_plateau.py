"""Lowers the learning rate when a metric stops improving, with or without a schedule."""

import math
import warnings

import keras
from keras import ops

from callbacks.monitor_mode import check_mode, resolve_mode
from callbacks.learning_rate_monitor import current_learning_rate
from callbacks.schedule_math import deserialize, evaluate, learning_rate_schedule, serialize

# PyTorch skips a reduction smaller than this.
_MINIMUM_CHANGE = 1e-8


@keras.saving.register_keras_serializable(package="efficient_learning")
class ScaledSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A schedule multiplied by `scale`, floored at `min_lr` but never above the schedule.

    `lr(t) = min(schedule(t), max(scale · schedule(t), min_lr))`. `ReduceLROnPlateau` wraps
    an optimizer's schedule in it and lowers `scale`.

    Args:
        schedule: a `LearningRateSchedule` or a float.
        scale: the factor applied to the schedule.
        min_lr: the floor of the scaled rate.
        name: the schedule's name.

    Example:

    ```python
    halved = ScaledSchedule(CosineAnnealing(0.1, t_max=1000), scale=0.5)
    ```
    """

    def __init__(self, schedule, scale=1.0, min_lr=0.0, name="ScaledSchedule"):
        super().__init__()
        self.schedule = schedule
        self.scale = float(scale)
        self.min_lr = float(min_lr)
        self.name = name

    def __call__(self, step):
        value = evaluate(self.schedule, step)
        return ops.minimum(value, ops.maximum(value * self.scale, self.min_lr))

    def get_config(self):
        return {"schedule": serialize(self.schedule), "scale": self.scale,
                "min_lr": self.min_lr, "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**{**config, "schedule": deserialize(config["schedule"])})


@keras.saving.register_keras_serializable(package="efficient_learning")
class ReduceLROnPlateau(keras.callbacks.Callback):
    """Multiplies the learning rate by `factor` after `patience` epochs without improvement.

    Its decisions equal `torch.optim.lr_scheduler.ReduceLROnPlateau` given the same metric
    sequence (one value per epoch): the same `threshold_mode`, `cooldown` and `min_lr`
    rules, and no reduction smaller than 1e-8. Unlike Keras's callback of the same name it
    also works when the optimizer has a `LearningRateSchedule`: it then scales the
    schedule's output (see `ScaledSchedule`) and retraces the train function, as the
    compiled step holds the scale as a constant.

    Args:
        monitor: the metric to watch, e.g. `"val_loss"`.
        mode: `"min"`, `"max"`, or `"auto"` (the default, as in Keras's own callback; see
            `callbacks.monitor_mode.resolve_mode`).
        factor: the factor applied to the learning rate, in (0, 1).
        patience: epochs without improvement before a reduction.
        threshold: the least change that counts as an improvement.
        threshold_mode: `"rel"` (relative to the best value) or `"abs"`.
        cooldown: epochs to wait after a reduction before counting again.
        min_lr: the learning rate is never reduced below this.
        verbose: 1 prints a line at each reduction.

    Example:

    ```python
    model.compile(optimizer=keras.optimizers.SGD(CosineAnnealing(0.1, t_max=5000)), ...)
    model.fit(x, y, validation_split=0.1, epochs=50,
              callbacks=[ReduceLROnPlateau(factor=0.5, patience=3)])
    ```
    """

    def __init__(self, monitor="val_loss", mode="auto", factor=0.1, patience=10, threshold=1e-4,
                 threshold_mode="rel", cooldown=0, min_lr=0.0, verbose=0):
        super().__init__()
        if not 0.0 < factor < 1.0:
            raise ValueError(f"factor must be in (0, 1); got {factor!r}")
        check_mode(mode)
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs'; got {threshold_mode!r}")
        self.monitor = monitor
        self.mode = mode
        self.factor = factor
        self.patience = patience
        self.threshold = threshold
        self.threshold_mode = threshold_mode
        self.cooldown = cooldown
        self.min_lr = min_lr
        self.verbose = verbose
        self.reset()

    def reset(self):
        """Forgets the best value and the counters, as at the start of training."""
        self.best = None
        self.bad_epochs = 0
        self.cooldown_counter = 0

    @property
    def direction(self):
        """`"min"` or `"max"`, with `"auto"` resolved by `callbacks.monitor_mode`."""
        return resolve_mode(self.monitor, self.mode, self.model)

    def on_train_begin(self, logs=None):
        self.reset()

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            warnings.warn(f"ReduceLROnPlateau: {self.monitor!r} is not in the logs "
                          f"(available: {', '.join(logs or {})}); the learning rate is unchanged",
                          stacklevel=2)
            return
        if self.step(float(value)):
            self._reduce(epoch)

    def step(self, value):
        """Records one epoch's metric value; returns whether the learning rate should drop.

        This is PyTorch's `ReduceLROnPlateau.step` without the optimizer, so its decisions
        can be checked against PyTorch's on any sequence.
        """
        if self.best is None:
            self.best = math.inf if self.direction == "min" else -math.inf
        if self._improves(value):
            self.best = value
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.bad_epochs = 0
        if self.bad_epochs > self.patience:
            self.cooldown_counter = self.cooldown
            self.bad_epochs = 0
            return True
        return False

    def _improves(self, value):
        if self.direction == "min":
            bound = self.best * (1 - self.threshold) if self.threshold_mode == "rel" \
                else self.best - self.threshold
            return value < bound
        bound = self.best * (1 + self.threshold) if self.threshold_mode == "rel" \
            else self.best + self.threshold
        return value > bound

    def state_dict(self):
        """The counters and the reductions so far (with a schedule, its scale), for resuming;
        with a constant rate the optimizer's own variable holds the reduced rate."""
        schedule = learning_rate_schedule(self.model.optimizer)
        return {"best": self.best, "bad_epochs": self.bad_epochs,
                "cooldown_counter": self.cooldown_counter,
                "scale": schedule.scale if isinstance(schedule, ScaledSchedule) else None}

    def load_state_dict(self, state):
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]
        self.cooldown_counter = state["cooldown_counter"]
        if state["scale"] is not None:
            optimizer = self.model.optimizer
            schedule = learning_rate_schedule(optimizer)
            if not isinstance(schedule, ScaledSchedule):
                schedule = ScaledSchedule(schedule, min_lr=self.min_lr)
                optimizer.learning_rate = schedule
            schedule.scale = state["scale"]
            self.model.make_train_function(force=True)

    def _reduce(self, epoch):
        optimizer = self.model.optimizer
        old = current_learning_rate(optimizer)
        new = max(old * self.factor, self.min_lr)
        if old - new <= _MINIMUM_CHANGE:
            return
        schedule = learning_rate_schedule(optimizer)
        if schedule is not None:
            if not isinstance(schedule, ScaledSchedule):
                schedule = ScaledSchedule(schedule, min_lr=self.min_lr)
                optimizer.learning_rate = schedule
            schedule.scale *= self.factor
            schedule.min_lr = self.min_lr
            # The compiled train step holds the scale as a constant: trace it again.
            self.model.make_train_function(force=True)
        else:
            optimizer.learning_rate = new
        if self.verbose:
            print(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new:.4g}.")

    def get_config(self):
        return {"monitor": self.monitor, "mode": self.mode, "factor": self.factor,
                "patience": self.patience, "threshold": self.threshold,
                "threshold_mode": self.threshold_mode, "cooldown": self.cooldown,
                "min_lr": self.min_lr, "verbose": self.verbose}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
