"""Gradient accumulation that equals one step on the full batch, and a callback that grows it."""

import keras
from keras import ops

from callbacks.training_state import sync_jax_state
from callbacks.wrapped_optimizer import WrappedOptimizer


@keras.saving.register_keras_serializable(package="efficient_learning")
class GradientAccumulation(WrappedOptimizer):
    """Wraps an optimizer so that it updates once per `steps` batches, on their mean gradient.

    Pass it to `model.compile` and add an `AccumulationScheduler` to `fit`'s callbacks.
    Then each update equals one step of the wrapped optimizer on the concatenated batches
    with a mean-reduced loss, including clipping and weight decay, with what Keras 3.15's
    `gradient_accumulation_steps` lacks:

    - the wrapped optimizer's `iterations`, so its learning-rate schedule, count updates,
      not batches; its moving average (`use_ema`) is updated once per update;
    - windows end with the epoch: a partial window is applied at the epoch's end (so also at
      the end of `fit`), never carried into the next epoch;
    - each batch's gradient is weighted by its number of samples, so a short last batch is
      not over-weighted (the callback needs `samples_per_epoch` for that).

    Every batch computes the wrapped optimizer's update and keeps it only at the end of a
    window (as Keras's JAX accumulation does; it compiles the same on every backend). That
    costs an optimizer update and a copy of the weights and optimizer state per batch, and
    an accumulator per weight: it pays when activations dominate memory
    (`bench/accumulation.py`).

    BatchNormalization still normalises each batch by its own statistics and updates its
    moving statistics once per batch, as with accumulation in PyTorch: accumulation gives
    the gradient of the large batch, not its batch statistics.

    Args:
        optimizer: the Keras optimizer to wrap.
        steps: batches per update (K).
        name: the optimizer's name.

    Example:

    ```python
    optimizer = GradientAccumulation(keras.optimizers.AdamW(1e-3), steps=8)
    model.compile(optimizer=optimizer, loss=..., metrics=...)
    model.fit(x, y, batch_size=32, epochs=10,
              callbacks=[AccumulationScheduler(samples_per_epoch=len(x))])
    ```
    """

    def __init__(self, optimizer, steps, name="gradient_accumulation"):
        super().__init__(optimizer, name)
        if int(steps) != steps or steps < 1:
            raise ValueError(f"steps must be an integer >= 1; got {steps!r}")
        self.steps = int(steps)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._accumulators = self.add_optimizer_variables(var_list, "accumulated_gradient")
        scalar = dict(shape=(), aggregation="none")
        self._window_batches = self.add_variable(dtype="int32", initializer="zeros",
                                                 name="window_batches", **scalar)
        self._window_weight = self.add_variable(dtype="float32", initializer="zeros",
                                                name="window_weight", **scalar)
        # Initial values through initializers: TensorFlow may build inside a graph, where a
        # plain assignment here would never run.
        self._steps = self.add_variable(dtype="int32", name="steps", **scalar,
                                        initializer=keras.initializers.Constant(self.steps))
        self._batch_weight = self.add_variable(dtype="float32", initializer="ones",
                                               name="batch_weight", **scalar)

    def apply(self, grads, trainable_variables=None):
        self._build_once(trainable_variables)
        variables = trainable_variables or self._trainable_variables
        weight = self._batch_weight.value
        for accumulator, gradient in zip(self._accumulators, grads):
            if gradient is not None:
                accumulator.assign(accumulator + weight * ops.cast(gradient, accumulator.dtype))
        self._window_weight.assign(self._window_weight + weight)
        self._window_batches.assign(self._window_batches + 1)
        self._batch_weight.assign(1.0)
        complete = ops.greater_equal(self._window_batches.value, self._steps.value)
        self._update(variables, complete)

    def flush(self):
        """Applies a partial window now (eagerly); `AccumulationScheduler` calls it at each
        epoch's end."""
        if self.built and int(ops.convert_to_numpy(self._window_batches.value)) > 0:
            self._update(self._trainable_variables, ops.convert_to_tensor(True))

    def _update(self, variables, complete):
        # Compute the wrapped optimizer's step on the window's mean gradient, then keep it
        # only where the window is complete.
        touched = list(variables) + self.inner_optimizer.variables
        before = [ops.copy(variable.value) for variable in touched]
        mean = [accumulator.value / self._window_weight.value for accumulator in self._accumulators]
        self.inner_optimizer.apply(mean, variables)
        for variable, old in zip(touched, before):
            variable.assign(ops.where(complete, variable.value, old))
        for accumulator in self._accumulators:
            accumulator.assign(ops.where(complete, ops.zeros_like(accumulator.value),
                                         accumulator.value))
        self._window_weight.assign(ops.where(complete, 0.0, self._window_weight.value))
        self._window_batches.assign(ops.where(complete, 0, self._window_batches.value))

    def set_steps(self, steps):
        """Changes K (from a callback, between epochs)."""
        self.steps = int(steps)
        if self.built:
            self._steps.assign(self.steps)

    def get_config(self):
        return {**super().get_config(), "steps": self.steps}


@keras.saving.register_keras_serializable(package="efficient_learning")
class AccumulationScheduler(keras.callbacks.Callback):
    """Ends accumulation windows with each epoch, weights the short last batch, and sets K.

    Needs the model's optimizer to be a `GradientAccumulation` (or to wrap one).
    `scheduling` maps an epoch (0-based) to the number of batches per update from that epoch
    on, so the effective batch grows during training (lecture notes, seed 002: "K can be
    increased over the course of training"). With `samples_per_epoch` (the length of the
    training data), the last batch of each epoch is weighted by its size; Keras makes every
    other batch full.

    With `adaptive=True` it also grows K toward the gradient noise scale B logged by a
    `GradientNoiseScale` placed before it: after each epoch, K becomes
    `min(max_steps, round(B / batch_size))` if that is larger, so the effective batch
    follows the largest batch that still pays off (it never shrinks).

    Args:
        scheduling: `{epoch: steps}`; `None` keeps the optimizer's `steps`.
        samples_per_epoch: training samples per epoch, for the weight of the last batch
            (and the batch size of `adaptive`).
        adaptive: grow K toward the logged noise scale.
        noise_key: the log key of the noise scale.
        max_steps: the largest K that `adaptive` sets.

    Example:

    ```python
    model.compile(optimizer=GradientAccumulation(keras.optimizers.SGD(0.1), steps=1), ...)
    model.fit(x, y, batch_size=32, epochs=30,
              callbacks=[AccumulationScheduler({0: 1, 10: 4, 20: 8}, samples_per_epoch=len(x))])
    ```
    """

    def __init__(self, scheduling=None, samples_per_epoch=None, adaptive=False,
                 noise_key="noise_scale", max_steps=64):
        super().__init__()
        self.scheduling = {int(epoch): int(steps) for epoch, steps in (scheduling or {}).items()}
        if any(steps < 1 for steps in self.scheduling.values()):
            raise ValueError(f"every number of steps must be >= 1; got {self.scheduling}")
        if adaptive and samples_per_epoch is None:
            raise ValueError("adaptive=True needs samples_per_epoch, to know the batch size")
        self.samples_per_epoch = samples_per_epoch
        self.adaptive = adaptive
        self.noise_key = noise_key
        self.max_steps = max_steps
        self._full_batch_size = None

    @property
    def _optimizer(self):
        optimizer = self.model.optimizer
        # Keras's LossScaleOptimizer (mixed_float16) goes around every other wrapper.
        while not isinstance(optimizer, GradientAccumulation):
            if not hasattr(optimizer, "inner_optimizer"):
                raise ValueError("AccumulationScheduler needs model.optimizer to be (or wrap) "
                                 "a GradientAccumulation; got "
                                 f"{type(self.model.optimizer).__name__}")
            optimizer = optimizer.inner_optimizer
        return optimizer

    def on_epoch_begin(self, epoch, logs=None):
        optimizer = self._optimizer
        passed = [start for start in self.scheduling if start <= epoch]
        if passed:
            optimizer.set_steps(self.scheduling[max(passed)])

    def _batch_size(self):
        # Taken from the first full epoch: a resumed run's first `fit` has fewer steps.
        if self._full_batch_size is None:
            self._full_batch_size = -(-self.samples_per_epoch // self.params["steps"])
        return self._full_batch_size

    def on_train_batch_begin(self, batch, logs=None):
        steps = (self.params or {}).get("steps")
        if self.samples_per_epoch is None or not steps or batch != steps - 1:
            return
        batch_size = self._batch_size()
        batches = -(-self.samples_per_epoch // batch_size)
        last = self.samples_per_epoch - (batches - 1) * batch_size
        if last == batch_size:
            return
        sync_jax_state(self.model)
        self._optimizer._batch_weight.assign(last / batch_size)

    def on_epoch_end(self, epoch, logs=None):
        optimizer = self._optimizer
        optimizer.flush()
        noise_scale = (logs or {}).get(self.noise_key)
        if self.adaptive and noise_scale is not None and noise_scale > 0:
            wanted = min(self.max_steps, max(1, round(noise_scale / self._batch_size())))
            if wanted > optimizer.steps:
                optimizer.set_steps(wanted)
        if logs is not None:
            logs["accumulation_steps"] = optimizer.steps

    def state_dict(self):
        """K now (raised adaptively, perhaps) and the batch size, for resuming; the window in
        progress is in the optimizer's variables."""
        return {"steps": self._optimizer.steps, "batch_size": self._full_batch_size}

    def load_state_dict(self, state):
        self._optimizer.set_steps(state["steps"])
        self._full_batch_size = state["batch_size"]

    def get_config(self):
        return {"scheduling": dict(self.scheduling), "samples_per_epoch": self.samples_per_epoch,
                "adaptive": self.adaptive, "noise_key": self.noise_key,
                "max_steps": self.max_steps}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
