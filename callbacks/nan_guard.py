"""Stops training at the first non-finite loss, restores the best weights, and says where."""

import math
import threading

import keras
import numpy as np

from callbacks.monitor_mode import check_mode, improves, resolve_mode
from callbacks.training_state import restore, snapshot, sync_jax_state, to_numpy

# How many calls of the training step Keras may dispatch before the guard has read their
# losses: it stops at most this many calls after the offending one, and Keras keeps the
# accelerator busy while it reads them.
MAX_CALLS_AHEAD = 8


@keras.saving.register_keras_serializable(package="efficient_learning")
class NaNGuard(keras.callbacks.Callback):
    """Ends training as soon as a batch's loss is NaN or infinite, and restores the best weights.

    Unlike `keras.callbacks.TerminateOnNaN`, which stops and leaves the NaN weights in the
    model, it:

    - restores the weights of the best epoch on `monitor` (finite values only), or the
      initial weights if no epoch finished;
    - names the first layer (in the model's order) whose weights turned non-finite in the
      offending update, i.e. whose gradient on the offending batch was non-finite;
    - with `probe_data`, also names the first layer whose output is non-finite on it under
      the restored weights (a NaN that the data or the model produces, not the update).

    Keras callbacks never see the batch itself, so the gradient is read off the update it
    caused. `report` holds the findings and `triggered` says whether it fired; put it before
    `EarlyStopping` so that the latter sees the stop.

    Reading every batch's loss makes Keras wait for each call's result before it dispatches
    the next one, where JAX (and PyTorch on an accelerator) would run ahead: 10 to 25 % of a
    small model's training time on JAX. With `asynchronous=True` the guard is `async_safe`:
    Keras reads the losses on its callback threads and keeps dispatching, up to
    `MAX_CALLS_AHEAD` calls ahead of them, so training stops up to that many calls after the
    offending one. The guard restores the same weights and reports the same batch and loss,
    but names the layer only if training stopped right after the offending call (an update
    from non-finite weights spreads them to every layer); `report["batches_after"]` says how
    many batches ran after it. If the offending call was among the epoch's last, that
    epoch's validation may see the non-finite weights before the guard restores the best
    ones. TensorFlow never dispatches ahead: there, both modes stop at once.

    Args:
        monitor: the epoch metric that selects the best weights.
        mode: `"min"`, `"max"` or `"auto"` (`callbacks.monitor_mode.resolve_mode`).
        probe_data: optional inputs to run through the layers after a stop.
        verbose: 1 prints the report.
        asynchronous: check the losses without holding training back (see above).

    Example:

    ```python
    guard = NaNGuard(monitor="val_loss", probe_data=x_val[:64])
    model.fit(x, y, validation_data=(x_val, y_val), epochs=50, callbacks=[guard])
    guard.triggered, guard.report
    ```
    """

    def __init__(self, monitor="val_loss", mode="auto", probe_data=None, verbose=1,
                 asynchronous=False):
        super().__init__()
        check_mode(mode)
        self.monitor = monitor
        self.mode = mode
        self.direction = None
        self.probe_data = probe_data
        self.verbose = verbose
        self.asynchronous = asynchronous
        self.triggered = False
        self.report = None
        self._best = None
        self._best_weights = None
        self._finding = None  # (batch, loss) of the earliest offending call of the epoch
        self._last_trained = None  # the last batch trained when the guard acted
        self._last_begun = 0  # the first batch of the last call dispatched
        self._unchecked = 0  # calls dispatched whose loss was not read yet
        self._checked = threading.Condition()

    @property
    def async_safe(self):
        """Read by Keras: whether this guard's batch ends may run on its callback threads."""
        return self.asynchronous

    def on_train_begin(self, logs=None):
        self.triggered, self.report, self._finding = False, None, None
        self._best = None
        self._best_weights = snapshot(self.model.weights)
        self.direction = None

    def on_train_batch_begin(self, batch, logs=None):
        self._last_begun = batch
        with self._checked:
            # Keras would otherwise dispatch as far ahead of the checks as the host gets.
            self._checked.wait_for(lambda: self._unchecked < MAX_CALLS_AHEAD)
            self._unchecked += 1

    def on_train_batch_end(self, batch, logs=None):
        # With `asynchronous`, on Keras's callback threads, several at a time: nothing here
        # touches the model's weights (nor `self.model`, which syncs JAX's training state
        # into them), and the earliest offending call wins.
        loss = (logs or {}).get("loss")
        with self._checked:
            try:
                if (loss is not None and not math.isfinite(float(loss))
                        and (self._finding is None or batch < self._finding[0])):
                    self._finding = (self._clamp(batch), float(loss))
                    self.triggered = True
                    self._model.stop_training = True
            finally:
                self._unchecked -= 1
                self._checked.notify_all()
        if not self.asynchronous:
            self._act_on_finding()

    def on_test_begin(self, logs=None):
        # Validation after a stop sees the restored weights. (Asynchronous, an offending call
        # among the epoch's last may only be found after it, at the epoch's end.)
        self._act_on_finding()

    def on_epoch_end(self, epoch, logs=None):
        self._act_on_finding()  # Keras has read every batch's loss by now
        self._finding = None
        value = (logs or {}).get(self.monitor)
        if value is None or self.triggered or not math.isfinite(float(value)):
            return
        value = float(value)
        if self.direction is None:  # now that the model's metrics are built
            self.direction = resolve_mode(self.monitor, self.mode, self.model)
        if improves(value, self._best, self.direction):
            self._best = value
            self._best_weights = snapshot(self.model.weights)

    def _clamp(self, batch):
        # With several steps per execution, `batch` is the last of the call (Keras numbers
        # the epoch's last call as a full one, past the epoch's end).
        steps = (self.params or {}).get("steps")
        return batch if steps is None else min(batch, steps - 1)

    def _act_on_finding(self):
        """Restores the best weights and writes the report once a loss was non-finite; names
        an earlier offending call if one was found since."""
        with self._checked:
            finding = self._finding
        if finding is None or self.report is not None and self.report["batch"] == finding[0]:
            return
        batch, loss = finding
        first = self.report is None
        if first:
            sync_jax_state(self.model)  # the weights the last update wrote
            self._last_trained = self._clamp(
                self._last_begun + self.model.steps_per_execution - 1)
            layer = (_first_layer_with_non_finite_weights(self.model)
                     if self._last_trained == batch else None)
            restore(self.model.weights, self._best_weights)
            output_layer = (_first_layer_with_non_finite_output(self.model, self.probe_data)
                            if self.probe_data is not None else None)
        else:  # checks can end out of order on Keras's threads
            layer, output_layer = None, self.report["non_finite_output_layer"]
        self.report = {
            "batch": batch,
            "loss": loss,
            "non_finite_gradient_layer": layer,
            "batches_after": self._last_trained - batch,
            "non_finite_output_layer": output_layer,
            "restored": "best epoch" if self._best is not None else "initial weights",
        }
        if self.verbose and first:
            found = layer or ("none found" if self._last_trained == batch else
                              f"not known: training stopped {self._last_trained - batch} "
                              f"batches later (asynchronous)")
            print(f"\nNaNGuard: loss {loss} at batch {batch}; first layer with a non-finite "
                  f"gradient: {found}"
                  + (f"; first non-finite output on the probe data: {output_layer or 'none'}"
                     if self.probe_data is not None else "")
                  + f"; restored the {self.report['restored']}.")

    def state_dict(self):
        """The best value so far and its weights (what a stop would restore), for resuming."""
        return {"triggered": self.triggered, "report": self.report, "best": self._best,
                "best_weights": to_numpy(self._best_weights)}

    def load_state_dict(self, state):
        self.triggered, self.report = state["triggered"], state["report"]
        self._best, self._best_weights = state["best"], state["best_weights"]

    def __deepcopy__(self, memo):
        # KerasTuner copies callbacks for every trial: the settings, not the state (nor its
        # lock, which cannot be copied).
        return type(self)(probe_data=self.probe_data, **self.get_config())

    def get_config(self):
        # The probe data is not configuration: give it again when rebuilding.
        return {"monitor": self.monitor, "mode": self.mode, "verbose": self.verbose,
                "asynchronous": self.asynchronous}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _first_layer_with_non_finite_weights(model):
    for layer in _layers(model):
        if any(not np.isfinite(keras.ops.convert_to_numpy(w)).all() for w in layer.weights):
            return layer.name
    return None


def _first_layer_with_non_finite_output(model, x):
    layers = _layers(model)
    # One model that returns every layer's output, so any functional graph works.
    probe = keras.Model(model.inputs, [layer.output for layer in layers])
    outputs = probe(keras.ops.convert_to_tensor(x), training=False)
    for layer, output in zip(layers, outputs if len(layers) > 1 else [outputs]):
        if not np.isfinite(keras.ops.convert_to_numpy(output)).all():
            return layer.name
    return None


def _layers(model):
    # Sequential and functional models list their layers in the order data flows.
    return [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
