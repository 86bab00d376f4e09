"""How much of a network to prune at each step: Zhu & Gupta's polynomial decay of density."""

import keras


@keras.saving.register_keras_serializable(package="efficient_learning")
class PolynomialSparsity:
    """The sparsity schedule of tensorflow-model-optimization's `PolynomialDecay`
    (Zhu & Gupta 2017, "To prune, or not to prune").

    `s(t) = s_f + (s_i − s_f) · (1 − p)^power` with `p = (t − begin_step) / (end_step −
    begin_step)` clipped to [0, 1]. Masks are recomputed at `begin_step`, every `frequency`
    steps after it, and at `end_step`, so the final sparsity is reached even when `frequency`
    does not divide the ramp; outside `[begin_step, end_step]` they stay as they are.

    Args:
        final_sparsity: the fraction of weights pruned from `end_step` on, in [0, 1).
        initial_sparsity: the fraction pruned at `begin_step`.
        begin_step: the step (training batch) at which pruning starts.
        end_step: the step at which the final sparsity is reached.
        frequency: steps between two mask updates.
        power: the exponent; 3 prunes fast while the network still has spare weights.

    Example:

    ```python
    schedule = PolynomialSparsity(0.9, begin_step=100, end_step=2000, frequency=100)
    schedule.sparsity(1050), schedule.prunes_at(1100)
    ```
    """

    def __init__(self, final_sparsity, initial_sparsity=0.0, begin_step=0, end_step=1000,
                 frequency=100, power=3.0):
        for name, value in (("final_sparsity", final_sparsity),
                            ("initial_sparsity", initial_sparsity)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1); got {value}")
        if initial_sparsity > final_sparsity:
            raise ValueError(f"initial_sparsity ({initial_sparsity}) must not exceed "
                             f"final_sparsity ({final_sparsity})")
        if not 0 <= begin_step <= end_step:
            raise ValueError(f"need 0 <= begin_step <= end_step; got {begin_step}, {end_step}")
        if frequency < 1:
            raise ValueError(f"frequency must be at least 1; got {frequency}")
        self.final_sparsity = float(final_sparsity)
        self.initial_sparsity = float(initial_sparsity)
        self.begin_step = int(begin_step)
        self.end_step = int(end_step)
        self.frequency = int(frequency)
        self.power = float(power)

    def sparsity(self, step):
        """The target sparsity at `step`."""
        if step >= self.end_step:  # also when the ramp is a single step
            return self.final_sparsity
        progress = max(0.0, (step - self.begin_step) / (self.end_step - self.begin_step))
        return (self.final_sparsity
                + (self.initial_sparsity - self.final_sparsity) * (1.0 - progress) ** self.power)

    def prunes_at(self, step):
        """Whether the masks are recomputed at `step`."""
        within = self.begin_step <= step <= self.end_step
        return within and ((step - self.begin_step) % self.frequency == 0 or step == self.end_step)

    def get_config(self):
        return {"final_sparsity": self.final_sparsity, "initial_sparsity": self.initial_sparsity,
                "begin_step": self.begin_step, "end_step": self.end_step,
                "frequency": self.frequency, "power": self.power}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
