"""Learning rates that drop by a factor at fixed steps: PyTorch's `StepLR` and `MultiStepLR`."""

import keras
from keras import ops

from callbacks.schedule_math import check_non_negative, check_positive, float_step, power


@keras.saving.register_keras_serializable(package="efficient_learning")
class StepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Multiplies the learning rate by `gamma` every `step_size` steps, as `torch` `StepLR`.

    `lr(t) = initial_learning_rate · gamma ** floor(t / step_size)`.

    Args:
        initial_learning_rate: the learning rate at step 0.
        step_size: the number of steps between two drops.
        gamma: the factor applied at each drop.
        name: the schedule's name.

    Example:

    ```python
    schedule = StepDecay(0.1, step_size=30 * steps_per_epoch, gamma=0.1)
    optimizer = keras.optimizers.SGD(schedule, momentum=0.9)
    ```
    """

    def __init__(self, initial_learning_rate, step_size, gamma=0.1, name="StepDecay"):
        super().__init__()
        check_positive("step_size", step_size)
        check_non_negative("gamma", gamma)
        self.initial_learning_rate = initial_learning_rate
        self.step_size = step_size
        self.gamma = gamma
        self.name = name

    def __call__(self, step):
        drops = ops.floor(float_step(step) / self.step_size)
        return self.initial_learning_rate * power(self.gamma, drops)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "step_size": self.step_size,
                "gamma": self.gamma, "name": self.name}


@keras.saving.register_keras_serializable(package="efficient_learning")
class MultiStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Multiplies the learning rate by `gamma` at each milestone, as `torch` `MultiStepLR`.

    `lr(t) = initial_learning_rate · gamma ** (number of milestones ≤ t)`; a milestone listed
    twice drops the rate twice, as in PyTorch.

    Args:
        initial_learning_rate: the learning rate at step 0.
        milestones: the steps at which the rate drops.
        gamma: the factor applied at each milestone.
        name: the schedule's name.

    Example:

    ```python
    schedule = MultiStepDecay(0.1, milestones=[3000, 4500], gamma=0.1)
    ```
    """

    def __init__(self, initial_learning_rate, milestones, gamma=0.1, name="MultiStepDecay"):
        super().__init__()
        milestones = sorted(int(milestone) for milestone in milestones)
        if not milestones or milestones[0] < 0:
            raise ValueError(f"milestones must be a non-empty list of steps >= 0; got {milestones}")
        check_non_negative("gamma", gamma)
        self.initial_learning_rate = initial_learning_rate
        self.milestones = milestones
        self.gamma = gamma
        self.name = name

    def __call__(self, step):
        passed = ops.cast(float_step(step) >= ops.convert_to_tensor(self.milestones, "float32"),
                          "float32")
        drops = ops.sum(passed)
        return self.initial_learning_rate * power(self.gamma, drops)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "milestones": list(self.milestones), "gamma": self.gamma, "name": self.name}
