"""Helpers shared by the learning-rate schedules.

Keras optimizers evaluate schedules in float32 under `jit`. The schedules therefore compute
every constant in Python (float64) and write their formulas so that float32 stays within
1e-6 relative of PyTorch's float64 values: a cosine that ends at 0 is written as
`sin²(π/2 · remaining/length)`, whose relative error stays small as it approaches 0, where
`(1 + cos(π · t/length)) / 2` would lose all its digits; and a rising or falling phase adds
a positive amount to its lower end, never subtracting nearly equal numbers.
"""

import math

import keras
from keras import ops


def float_step(step):
    """The optimizer's update count (Python int or backend tensor) as a float32 tensor."""
    return ops.cast(ops.convert_to_tensor(step), "float32")


def cosine_fraction(distance, length):
    """How far up a half cosine of `length` steps is, `distance` steps from its low end.

    `sin²(π/2 · distance/length)`, which is `(1 − cos(π · distance/length)) / 2`: 0 at the
    low end, 1 at the high end, and accurate to float32's relative precision near 0.
    """
    return ops.square(ops.sin((math.pi / 2.0) * (distance / length)))


def power(base, exponent):
    """`base ** exponent` for a Python float `base` >= 0 and a float32 tensor `exponent` >= 0.

    Computed as `exp(exponent · log(base))` with the logarithm in float64: raising the
    float32 rounding of `base` (off by up to 3e-8 relative) would multiply that error by
    the exponent.
    """
    if base == 0:
        return ops.where(exponent > 0, 0.0, 1.0)
    return ops.exp(exponent * math.log(base))


def evaluate(learning_rate, step):
    """The value of a float or a `LearningRateSchedule` at `step`, as a float32 tensor."""
    if isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
        return ops.cast(learning_rate(step), "float32")
    return ops.convert_to_tensor(learning_rate, dtype="float32")


def learning_rate_schedule(optimizer):
    """The optimizer's `LearningRateSchedule`, or `None` when its learning rate is a variable."""
    # Keras has no public accessor: `optimizer.learning_rate` evaluates the schedule.
    learning_rate = getattr(optimizer, "_learning_rate", None)
    if isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
        return learning_rate
    return None


def serialize(learning_rate):
    """A float as itself, a schedule as its Keras serialisation."""
    if isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
        return keras.saving.serialize_keras_object(learning_rate)
    return float(learning_rate)


def deserialize(config):
    """The inverse of `serialize`."""
    if isinstance(config, dict):
        return keras.saving.deserialize_keras_object(config)
    return float(config)


def check_positive(name, value):
    if not value > 0:
        raise ValueError(f"{name} must be > 0; got {value!r}")


def check_non_negative(name, value):
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0; got {value!r}")
