"""A learning rate that decays polynomially to zero: PyTorch's `PolynomialLR`."""

import keras
from keras import ops

from callbacks.schedule_math import check_non_negative, check_positive, float_step


@keras.saving.register_keras_serializable(package="efficient_learning")
class PolynomialDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Decays the learning rate to 0 over `total_steps`, as `torch` `PolynomialLR`.

    `lr(t) = initial_learning_rate · ((total_steps − min(t, total_steps)) / total_steps) ** power`;
    `power=1` is the linear decay of BERT-style fine-tuning. Unlike Keras's own
    `PolynomialDecay` it ends at 0, as PyTorch's does, and has no `cycle`.

    Args:
        initial_learning_rate: the learning rate at step 0.
        total_steps: the step at which the rate reaches 0 (and stays).
        power: the exponent of the decay.
        name: the schedule's name.

    Example:

    ```python
    schedule = PolynomialDecay(5e-5, total_steps=epochs * steps_per_epoch, power=1.0)
    optimizer = keras.optimizers.AdamW(schedule)
    ```
    """

    def __init__(self, initial_learning_rate, total_steps, power=1.0, name="PolynomialDecay"):
        super().__init__()
        check_positive("total_steps", total_steps)
        check_non_negative("power", power)
        self.initial_learning_rate = initial_learning_rate
        self.total_steps = total_steps
        self.power = power
        self.name = name

    def __call__(self, step):
        # The remaining steps are exact in float32; `1 - t/T` would lose the small end.
        remaining = float(self.total_steps) - ops.minimum(float_step(step), float(self.total_steps))
        return self.initial_learning_rate * ops.power(remaining / self.total_steps, self.power)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "total_steps": self.total_steps, "power": self.power, "name": self.name}
