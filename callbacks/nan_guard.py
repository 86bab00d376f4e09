"""Stops training at the first non-finite loss, restores the best weights, and says where."""

import math

import keras
import numpy as np

from callbacks.monitor_mode import check_mode, improves, resolve_mode
from callbacks.training_state import restore, snapshot, sync_jax_state, to_numpy


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

    Args:
        monitor: the epoch metric that selects the best weights.
        mode: `"min"`, `"max"` or `"auto"` (`callbacks.monitor_mode.resolve_mode`).
        probe_data: optional inputs to run through the layers after a stop.
        verbose: 1 prints the report.

    Example:

    ```python
    guard = NaNGuard(monitor="val_loss", probe_data=x_val[:64])
    model.fit(x, y, validation_data=(x_val, y_val), epochs=50, callbacks=[guard])
    guard.triggered, guard.report
    ```
    """

    def __init__(self, monitor="val_loss", mode="auto", probe_data=None, verbose=1):
        super().__init__()
        check_mode(mode)
        self.monitor = monitor
        self.mode = mode
        self.direction = None
        self.probe_data = probe_data
        self.verbose = verbose
        self.triggered = False
        self.report = None
        self._best = None
        self._best_weights = None

    def on_train_begin(self, logs=None):
        self.triggered, self.report = False, None
        self._best = None
        self._best_weights = snapshot(self.model.weights)
        self.direction = None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or self.triggered or not math.isfinite(float(value)):
            return
        value = float(value)
        if self.direction is None:  # now that the model's metrics are built
            self.direction = resolve_mode(self.monitor, self.mode, self.model)
        if improves(value, self._best, self.direction):
            self._best = value
            self._best_weights = snapshot(self.model.weights)

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or math.isfinite(float(loss)) or self.triggered:
            return
        self.triggered = True
        self.model.stop_training = True
        # With several steps per execution, `batch` is the last of the call (Keras numbers
        # the epoch's last call as a full one).
        steps = (self.params or {}).get("steps")
        if steps is not None:
            batch = min(batch, steps - 1)
        sync_jax_state(self.model)  # the weights the offending update wrote
        layer = _first_layer_with_non_finite_weights(self.model)
        restore(self.model.weights, self._best_weights)
        self.report = {
            "batch": batch,
            "loss": float(loss),
            "non_finite_gradient_layer": layer,
            "non_finite_output_layer": (_first_layer_with_non_finite_output(self.model,
                                                                            self.probe_data)
                                        if self.probe_data is not None else None),
            "restored": "best epoch" if self._best is not None else "initial weights",
        }
        if self.verbose:
            print(f"\nNaNGuard: loss {loss} at batch {batch}; first layer with a non-finite "
                  f"gradient: {layer or 'none found'}"
                  + (f"; first non-finite output on the probe data: "
                     f"{self.report['non_finite_output_layer'] or 'none'}"
                     if self.probe_data is not None else "")
                  + f"; restored the {self.report['restored']}.")

    def state_dict(self):
        """The best value so far and its weights (what a stop would restore), for resuming."""
        return {"triggered": self.triggered, "report": self.report, "best": self._best,
                "best_weights": to_numpy(self._best_weights)}

    def load_state_dict(self, state):
        self.triggered, self.report = state["triggered"], state["report"]
        self._best, self._best_weights = state["best"], state["best_weights"]

    def get_config(self):
        # The probe data is not configuration: give it again when rebuilding.
        return {"monitor": self.monitor, "mode": self.mode, "verbose": self.verbose}

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
