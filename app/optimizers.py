"""Building the optimizer and its learning-rate schedule from the configuration."""

import dataclasses

import keras

import callbacks
from app.config import COMMON_OPTIMIZER_KEYS

OPTIMIZERS = {
    "sgd": keras.optimizers.SGD,
    "adagrad": keras.optimizers.Adagrad,
    "rmsprop": keras.optimizers.RMSprop,
    "adadelta": keras.optimizers.Adadelta,
    "adam": keras.optimizers.Adam,
    "adamw": keras.optimizers.AdamW,
    "radam": callbacks.RAdam,
}


def default_learning_rate(name):
    """Keras's default learning rate for the optimizer called `name`."""
    return OPTIMIZERS[name]().get_config()["learning_rate"]


def build_schedule(schedule_config, steps_per_epoch, epochs):
    """The learning rate to give the optimizer: a float or a `LearningRateSchedule`.

    Lengths in `schedule_config.unit` are converted to optimizer updates here; every
    schedule advances once per update.

    Args:
        schedule_config: an `app.config.ScheduleConfig` whose `lr` is a number.
        steps_per_epoch: optimizer updates per epoch.
        epochs: the length of the run in epochs.

    Example:

    ```python
    build_schedule(ScheduleConfig(name="one_cycle", lr=0.01), steps_per_epoch=20, epochs=30)
    # OneCycle(max_lr=0.01, total_steps=600)
    ```
    """
    config = schedule_config
    lr = config.lr
    per_unit = steps_per_epoch if config.unit == "epochs" else 1

    def updates(length):
        return max(1, int(round(length * per_unit)))

    warmup_steps = int(round(config.warmup * per_unit))
    total_steps = max(1, steps_per_epoch * epochs)
    main_steps = max(1, total_steps - warmup_steps)

    def pick(name, default):
        value = getattr(config, name)
        return default if value is None else value

    if config.name == "constant":
        schedule = lr
    elif config.name == "step":
        schedule = callbacks.StepDecay(lr, updates(config.step_size), pick("gamma", 0.1))
    elif config.name == "multistep":
        schedule = callbacks.MultiStepDecay(lr, [updates(m) for m in config.milestones],
                                            pick("gamma", 0.1))
    elif config.name == "exponential":
        schedule = keras.optimizers.schedules.ExponentialDecay(
            lr, decay_steps=per_unit, decay_rate=pick("gamma", 0.9))
    elif config.name == "cosine":
        t_max = updates(config.t_max) if config.t_max is not None else main_steps
        schedule = callbacks.CosineAnnealing(lr, t_max, pick("min_lr", 0.0))
    elif config.name == "cosine_restarts":
        schedule = callbacks.CosineAnnealingWarmRestarts(
            lr, updates(config.t_0), pick("t_mult", 1), pick("min_lr", 0.0))
    elif config.name == "cyclic":
        down = updates(config.step_size_down) if config.step_size_down is not None else None
        schedule = callbacks.CyclicLR(pick("min_lr", lr / 10), lr, updates(config.step_size),
                                      down, pick("cyclic_mode", "triangular"),
                                      pick("gamma", 1.0))
    else:
        schedule = callbacks.OneCycle(
            lr, total_steps, pick("pct_start", 0.3), pick("anneal_strategy", "cos"),
            pick("div_factor", 25.0), pick("final_div_factor", 1e4), pick("three_phase", False))
    if warmup_steps > 0:
        return callbacks.Warmup(schedule, warmup_steps, config.warmup_start_factor)
    return schedule


def build_optimizer(optimizer_config, training_config, learning_rate):
    """A Keras optimizer with the configured parameters, weight decay and clipping.

    Args:
        optimizer_config: an `app.config.OptimizerConfig`.
        training_config: an `app.config.TrainingConfig` (clipping, accumulation steps).
        learning_rate: a float or a `LearningRateSchedule`.

    Example:

    ```python
    optimizer = build_optimizer(OptimizerConfig(name="sgd", momentum=0.9, nesterov=True),
                                TrainingConfig(global_clip_norm=1.0), 0.05)
    ```
    """
    parameters = {
        field.name: getattr(optimizer_config, field.name)
        for field in dataclasses.fields(optimizer_config)
        if field.name not in COMMON_OPTIMIZER_KEYS - {"weight_decay"}
        and getattr(optimizer_config, field.name) is not None
    }
    clipping = {
        "clipvalue": training_config.clip_value,
        "clipnorm": training_config.clip_norm,
        "global_clipnorm": training_config.global_clip_norm,
    }
    parameters.update({key: value for key, value in clipping.items() if value is not None})
    optimizer = OPTIMIZERS[optimizer_config.name](learning_rate=learning_rate, **parameters)
    if optimizer_config.lookahead:
        optimizer = callbacks.Lookahead(optimizer, optimizer_config.lookahead_sync_period,
                                        optimizer_config.lookahead_step_size)
    if accumulates(training_config):
        # Outermost: one update of everything inside per window of batches.
        optimizer = callbacks.GradientAccumulation(optimizer, training_config.accumulation_steps)
    return optimizer


def accumulates(training_config):
    """Whether the configuration accumulates gradients over several batches."""
    return (training_config.accumulation_steps > 1 or bool(training_config.accumulation_schedule)
            or training_config.accumulation_adaptive)
