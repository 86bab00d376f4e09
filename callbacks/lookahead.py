"""Lookahead (Zhang et al., "Lookahead Optimizer: k steps forward, 1 step back", 2019)."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="efficient_learning")
class Lookahead(keras.optimizers.Optimizer):
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
        super().__init__(learning_rate=0.0, name=name)
        if int(sync_period) != sync_period or sync_period < 1:
            raise ValueError(f"sync_period must be an integer >= 1; got {sync_period!r}")
        if not 0 < slow_step_size <= 1:
            raise ValueError(f"slow_step_size must be in (0, 1]; got {slow_step_size!r}")
        self.inner_optimizer = optimizer
        self.sync_period = int(sync_period)
        self.slow_step_size = slow_step_size

    def build(self, var_list):
        if self.built:
            return
        self.inner_optimizer.build(var_list)
        super().build(var_list)
        self._slow_weights = self.add_optimizer_variables(var_list, "slow")
        for slow, variable in zip(self._slow_weights, var_list):
            # A copy: JAX donates every state buffer, and a shared one cannot be donated twice.
            slow.assign(ops.copy(variable.value))

    @property
    def variables(self):
        return self._variables + self.inner_optimizer.variables

    def apply(self, grads, trainable_variables=None):
        if not self.built:
            with keras.name_scope(self.name, caller=self):
                self.build(trainable_variables)
            self.built = True
        self.inner_optimizer.apply(grads, trainable_variables=trainable_variables)
        fast_weights = trainable_variables or self._trainable_variables
        synchronise = ops.equal(ops.mod(self.inner_optimizer.iterations, self.sync_period), 0)
        for slow, fast in zip(self._slow_weights, fast_weights):
            slow_value, fast_value = slow.value, fast.value
            pulled = slow_value + self.slow_step_size * (fast_value - slow_value)
            slow.assign(ops.where(synchronise, pulled, slow_value))
            fast.assign(ops.where(synchronise, pulled, fast_value))

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        # The base constructor sets a placeholder before the inner optimizer exists.
        if "inner_optimizer" in self.__dict__:
            self.inner_optimizer.learning_rate = learning_rate

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    def scale_loss(self, loss):
        return self.inner_optimizer.scale_loss(loss)

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    def get_config(self):
        return {"name": self.name,
                "optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
                "sync_period": self.sync_period, "slow_step_size": self.slow_step_size}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        optimizer = keras.saving.deserialize_keras_object(config["optimizer"],
                                                         custom_objects=custom_objects)
        return cls(optimizer, **{k: v for k, v in config.items() if k != "optimizer"})
