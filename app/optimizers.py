"""Building the optimizer and its learning-rate schedule from the configuration."""

import dataclasses

import keras

OPTIMIZERS = {
    "sgd": keras.optimizers.SGD,
    "adagrad": keras.optimizers.Adagrad,
    "rmsprop": keras.optimizers.RMSprop,
    "adadelta": keras.optimizers.Adadelta,
    "adam": keras.optimizers.Adam,
    "adamw": keras.optimizers.AdamW,
}


def default_learning_rate(name):
    """Keras's default learning rate for the optimizer called `name`."""
    return OPTIMIZERS[name]().get_config()["learning_rate"]


def build_schedule(schedule_config, learning_rate, steps_per_epoch, epochs):
    """The learning rate to give the optimizer: a float or a `LearningRateSchedule`.

    Schedule lengths are configured in epochs and converted to optimizer updates here.

    Args:
        schedule_config: an `app.config.ScheduleConfig`.
        learning_rate: the peak (or constant) learning rate.
        steps_per_epoch: optimizer updates per epoch.
        epochs: the length of the run in epochs.
    """
    total_steps = max(1, steps_per_epoch * epochs)
    if schedule_config.name == "constant":
        return learning_rate
    if schedule_config.name == "exponential":
        return keras.optimizers.schedules.ExponentialDecay(
            learning_rate, decay_steps=steps_per_epoch, decay_rate=schedule_config.decay_rate
        )
    warmup_steps = int(round(schedule_config.warmup_epochs * steps_per_epoch))
    decay_steps = max(1, total_steps - warmup_steps)
    alpha = min(1.0, schedule_config.min_learning_rate / learning_rate)
    if warmup_steps == 0:
        return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps, alpha=alpha)
    return keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps, alpha=alpha, warmup_target=learning_rate, warmup_steps=warmup_steps
    )


def build_optimizer(optimizer_config, training_config, learning_rate):
    """A Keras optimizer with the configured parameters, weight decay and clipping.

    Args:
        optimizer_config: an `app.config.OptimizerConfig` whose `learning_rate` is resolved.
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
        if field.name not in ("name", "learning_rate")
        and getattr(optimizer_config, field.name) is not None
    }
    clipping = {
        "clipvalue": training_config.clip_value,
        "clipnorm": training_config.clip_norm,
        "global_clipnorm": training_config.global_clip_norm,
    }
    parameters.update({key: value for key, value in clipping.items() if value is not None})
    if training_config.accumulation_steps > 1:
        parameters["gradient_accumulation_steps"] = training_config.accumulation_steps
    return OPTIMIZERS[optimizer_config.name](learning_rate=learning_rate, **parameters)
