"""Rectified Adam (Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond", 2020)."""

import math

import keras
import numpy as np
from keras import ops

# Steps whose rectification term is tabulated in float64 (see `RAdam._rho_table`).
_MAX_TABLE_STEPS = 2**16


@keras.saving.register_keras_serializable(package="efficient_learning")
class RAdam(keras.optimizers.Optimizer):
    """Adam whose adaptive step is switched on only once its variance is tractable.

    While the length of the approximated simple moving average ρ_t ≤ 5 the update is SGD with
    momentum (bias-corrected); afterwards it is Adam's step times the rectification term
    r_t = sqrt((ρ_t − 4)(ρ_t − 2)ρ_∞ / ((ρ_∞ − 4)(ρ_∞ − 2)ρ_t)). Equal to `torch.optim.RAdam`;
    Keras's `weight_decay` is decoupled, as torch's `decoupled_weight_decay=True`.

    ρ_t = ρ_∞ − 2tβ₂ᵗ/(1 − β₂ᵗ) subtracts two numbers near ρ_∞ = 2/(1 − β₂) − 1 in the first
    steps, where float32 would lose the digits that decide the switch and r_t; those steps
    are tabulated in float64.

    Args:
        learning_rate: a float or a `LearningRateSchedule`.
        beta_1: the decay of the first moment.
        beta_2: the decay of the second moment.
        epsilon: added to the root of the second moment.
        **kwargs: the arguments of every Keras optimizer (`weight_decay`, `clipnorm`,
            `global_clipnorm`, `use_ema`, ...).

    Example:

    ```python
    model.compile(optimizer=RAdam(1e-3, weight_decay=1e-2), loss=..., metrics=...)
    ```
    """

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 name="radam", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if not 0 <= beta_1 < 1 or not 0 < beta_2 < 1:
            raise ValueError(f"need 0 <= beta_1 < 1 and 0 < beta_2 < 1; got {beta_1}, {beta_2}")
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self._rho_infinity = 2.0 / (1.0 - beta_2) - 1.0
        self._rho_table = self._tabulate_rho()

    def _tabulate_rho(self):
        """ρ_t for t = 1.. until it is half of ρ_∞, where float32 becomes accurate.

        A NumPy array, not a list: every update step converts it to a tensor, and a list of
        the ~10⁴ steps that β₂ = 0.9999 tabulates took PyTorch about 0.15 s to convert.
        """
        table = []
        for step in range(1, _MAX_TABLE_STEPS + 1):
            power = self.beta_2**step
            rho = self._rho_infinity - 2.0 * step * power / (1.0 - power)
            table.append(rho)
            if rho > self._rho_infinity / 2:
                break
        return np.asarray(table, dtype=np.float64)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._momentums, self._velocities = self.add_optimizer_variables(
            var_list, ["momentum", "velocity"])

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        step = ops.cast(self.iterations + 1, dtype)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - self.beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - self.beta_2))

        bias_correction_1 = -ops.expm1(step * math.log(self.beta_1)) if self.beta_1 else 1.0
        bias_correction_2 = -ops.expm1(step * math.log(self.beta_2))
        rho = self._rho(step, bias_correction_2)
        rho_infinity = self._rho_infinity
        rectification = ops.sqrt(ops.maximum(
            (rho - 4.0) * (rho - 2.0) * rho_infinity
            / ((rho_infinity - 4.0) * (rho_infinity - 2.0) * rho), 0.0))
        adaptive = ops.sqrt(bias_correction_2) / ops.add(ops.sqrt(v), self.epsilon)
        scale = ops.where(rho > 5.0, rectification * adaptive, 1.0)
        self.assign_sub(variable, lr * (m / bias_correction_1) * scale)

    def _rho(self, step, bias_correction_2):
        table = ops.convert_to_tensor(self._rho_table, dtype=step.dtype)
        index = ops.cast(ops.minimum(step, len(self._rho_table)) - 1, "int32")
        power = 1.0 - bias_correction_2
        formula = self._rho_infinity - 2.0 * step * power / bias_correction_2
        return ops.where(step <= len(self._rho_table), ops.take(table, index), formula)

    def get_config(self):
        config = super().get_config()
        config.update(beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon)
        return config
