"""Lookahead (Zhang et al., "Lookahead Optimizer: k steps forward, 1 step back", 2019)."""

import keras
from keras import ops

from callbacks.wrapped_optimizer import WrappedOptimizer


@keras.saving.register_keras_serializable(package="efficient_learning")
class Lookahead(WrappedOptimizer):
    """Wraps an optimizer: every `sync_period` updates, pulls slow weights toward the fast ones.

    The wrapped ("fast") optimizer updates the weights as usual; every `sync_period` of its
    updates the slow weights move `slow_step_size` of the way toward the fast weights, and the
    fast weights restart from there: `slow ← slow + α(fast − slow); fast ← slow`. Learning
    rate, iterations and schedules are the wrapped optimizer's.

    Args:
        optimizer: the inner Keras optimizer (any, including `RAdam`).
        sync_period: k, the number of fast updates between synchronisations.
        slow_step_size: α in (0, 1].
        name: the optimizer's name.

    Example:

    ```python
    model.compile(optimizer=Lookahead(RAdam(1e-3), sync_period=6, slow_step_size=0.5), ...)
    ```
    """

    def __init__(self, optimizer, sync_period=5, slow_step_size=0.5, name="lookahead"):
        super().__init__(optimizer, name)
        if int(sync_period) != sync_period or sync_period < 1:
            raise ValueError(f"sync_period must be an integer >= 1; got {sync_period!r}")
        if not 0 < slow_step_size <= 1:
            raise ValueError(f"slow_step_size must be in (0, 1]; got {slow_step_size!r}")
        self.sync_period = int(sync_period)
        self.slow_step_size = slow_step_size

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        # The slow weights start as copies of the weights, through initializers: TensorFlow
        # may build inside a graph, where a plain assignment here would never run; and a
        # copy, because JAX donates every state buffer and a shared one cannot go twice.
        self._slow_weights = [
            self.add_variable_from_reference(
                variable, "slow",
                initializer=lambda shape, dtype, variable=variable: ops.cast(
                    ops.copy(variable.value), dtype))
            for variable in var_list
        ]

    def apply(self, grads, trainable_variables=None):
        self._build_once(trainable_variables)
        self.inner_optimizer.apply(grads, trainable_variables=trainable_variables)
        fast_weights = trainable_variables or self._trainable_variables
        synchronise = ops.equal(ops.mod(self.inner_optimizer.iterations, self.sync_period), 0)
        for slow, fast in zip(self._slow_weights, fast_weights):
            slow_value, fast_value = slow.value, fast.value
            pulled = slow_value + self.slow_step_size * (fast_value - slow_value)
            if fast.constraint is not None:  # e.g. a pruning mask, which the pull must keep
                pulled = fast.constraint(pulled)
            slow.assign(ops.where(synchronise, pulled, slow_value))
            fast.assign(ops.where(synchronise, pulled, fast_value))

    def get_config(self):
        return {**super().get_config(), "sync_period": self.sync_period,
                "slow_step_size": self.slow_step_size}
