"""The optimizers that `optimizer.name` chooses, and building one with its wrappers.

Every optimizer takes `weight_decay` (decoupled, as Keras applies it) and can be wrapped in
`callbacks.Lookahead`; its own keys are listed in its row and left to Keras's default when
unset. Adding an optimizer: one row here (a class in `callbacks/` if Keras lacks it, tested
against `torch.optim`), and one field of `app.config.schema.OptimizerConfig` for a key no row
had before.

```python
optimizer = build_optimizer(OptimizerConfig(name="sgd", momentum=0.9, nesterov=True),
                            TrainingConfig(global_clip_norm=1.0), 0.05)
```
"""

from app.tables import Row, Table


def _keras(name):
    def build():
        import keras

        return getattr(keras.optimizers, name)
    return build


def _radam():
    import callbacks

    return callbacks.RAdam


OPTIMIZERS = Table("optimizer", "name", [
    Row("sgd", _keras("SGD"), {"momentum": None, "nesterov": None},
        {"class": "`keras.optimizers.SGD`"}),
    Row("adagrad", _keras("Adagrad"), {"epsilon": None, "initial_accumulator_value": None},
        {"class": "`keras.optimizers.Adagrad`"}),
    Row("rmsprop", _keras("RMSprop"),
        {"rho": None, "momentum": None, "epsilon": None, "centered": None},
        {"class": "`keras.optimizers.RMSprop`"}),
    Row("adadelta", _keras("Adadelta"), {"rho": None, "epsilon": None},
        {"class": "`keras.optimizers.Adadelta`"}),
    Row("adam", _keras("Adam"),
        {"beta_1": None, "beta_2": None, "epsilon": None, "amsgrad": None},
        {"class": "`keras.optimizers.Adam`"}),
    Row("adamw", _keras("AdamW"),
        {"beta_1": None, "beta_2": None, "epsilon": None, "amsgrad": None},
        {"class": "`keras.optimizers.AdamW`"}),
    Row("radam", _radam, {"beta_1": None, "beta_2": None, "epsilon": None},
        {"class": "`callbacks.RAdam`"}),
], columns=("class",), keys_heading="its keys (null: Keras's default)")


def optimizer_class(name):
    """The optimizer class that `optimizer.name: <name>` builds."""
    return OPTIMIZERS.row(name).build()


def default_learning_rate(name):
    """Keras's default learning rate for the optimizer called `name`."""
    return optimizer_class(name)().get_config()["learning_rate"]


def build_optimizer(optimizer_config, training_config, learning_rate):
    """A Keras optimizer with the configured parameters, weight decay and clipping.

    `optimizer.lookahead` wraps it in `callbacks.Lookahead`; accumulating gradients
    (`training.accumulation_*`) wraps that in `callbacks.GradientAccumulation`; and
    `training.precision: mixed_float16` wraps everything in Keras's `LossScaleOptimizer`,
    which skips a step whose gradients overflow (a skipped batch never enters an
    accumulation window). bfloat16 has float32's range and needs no scaling.

    Args:
        optimizer_config: an `app.config.OptimizerConfig`.
        training_config: an `app.config.TrainingConfig` (clipping, accumulation steps).
        learning_rate: a float or a `LearningRateSchedule`.
    """
    import callbacks

    row = OPTIMIZERS.row(optimizer_config.name)
    parameters = {key: value for key, value in row.resolve(optimizer_config).items()
                  if value is not None}
    settings = {
        "weight_decay": optimizer_config.weight_decay,
        "clipvalue": training_config.clip_value,
        "clipnorm": training_config.clip_norm,
        "global_clipnorm": training_config.global_clip_norm,
    }
    parameters.update({key: value for key, value in settings.items() if value is not None})
    optimizer = row.build()(learning_rate=learning_rate, **parameters)
    if optimizer_config.lookahead:
        optimizer = callbacks.Lookahead(optimizer, optimizer_config.lookahead_sync_period,
                                        optimizer_config.lookahead_step_size)
    if accumulates(training_config):
        # Outermost: one update of everything inside per window of batches.
        optimizer = callbacks.GradientAccumulation(optimizer, training_config.accumulation_steps)
    if training_config.precision == "mixed_float16":
        import keras

        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def accumulates(training_config):
    """Whether the configuration accumulates gradients over several batches."""
    return (training_config.accumulation_steps > 1 or bool(training_config.accumulation_schedule)
            or training_config.accumulation_adaptive)
