"""Early stopping that restores the best weights, and never calls a NaN epoch the best."""

import math
import operator
import signal
import threading
import warnings

import keras
import numpy as np

from callbacks.monitor_mode import resolve_mode
from callbacks.training_state import restore, snapshot, to_numpy

MIN_DELTA_MODES = ("absolute", "relative")
# The signals `graceful_signals` may name, and the default handler each replaces.
GRACEFUL_SIGNALS = {"SIGINT": signal.default_int_handler, "SIGTERM": signal.SIG_DFL}


@keras.saving.register_keras_serializable(package="efficient_learning")
class EarlyStopping(keras.callbacks.EarlyStopping):
    """Stops training when `monitor` stops improving and restores the best epoch's weights.

    A drop-in for `keras.callbacks.EarlyStopping` (same arguments, same decisions, and Keras's
    own test cases pass against it) with `restore_best_weights=True` by default, and:

    - A NaN or infinite value never becomes the best (Keras lets a NaN first epoch win and then
      restores its weights). With `check_finite`, such a value stops training at once.
    - `stopping_threshold` stops once the metric is at least that good, and
      `divergence_threshold` stops once it is worse than that (as PyTorch Lightning's).
    - `min_delta_mode="relative"` makes `min_delta` a fraction of the best value.
    - With an optimizer that keeps an exponential moving average (`use_ema=True`), the
      weights restored are the averaged ones of the best epoch, which is what the model would
      have been had training ended there (Keras restores the raw weights over the average).
    - The best weights are restored whenever training ends: by patience, by a threshold, by
      another callback (e.g. `NaNGuard`) or by Ctrl-C. While training runs in the main
      thread, the first Ctrl-C stops at the end of the current batch (`interrupted` becomes
      `True` and `fit` returns normally); a second one interrupts at once. The signal
      handler only sets that flag. `graceful_signals` can add SIGTERM (what Slurm, Docker,
      Kubernetes and preemptible VMs send), which then stops the same way.
    - The snapshot is a copy of each variable on its own device, not a copy to host memory
      as Keras makes (see `bench/early_stopping.py`).

    `best_epoch` is 0-based as in Keras; `stop_reason` says why training stopped;
    `direction` is `"min"` or `"max"` once the first epoch has ended.

    Args:
        monitor: the logged quantity to watch.
        min_delta: the least change that counts as an improvement.
        patience: epochs without improvement before stopping.
        verbose: 1 prints why training stopped and which epoch was restored.
        mode: `"min"`, `"max"` or `"auto"` (from the metric's direction).
        baseline: a value the metric must beat for patience to restart.
        restore_best_weights: whether to restore the best epoch's weights at the end.
        start_from_epoch: epochs to ignore before watching.
        check_finite: stop as soon as the metric is NaN or infinite.
        stopping_threshold: stop once the metric is this good or better.
        divergence_threshold: stop once the metric is worse than this.
        min_delta_mode: `"absolute"` or `"relative"` (to the best value).
        graceful_signals: names of the signals whose first arrival stops training at the end
            of the batch (`interrupt_signal` says which came); only signals still at their
            default handler are caught.

    Example:

    ```python
    stopper = EarlyStopping(monitor="val_loss", patience=5, min_delta=1e-3,
                            min_delta_mode="relative", divergence_threshold=10.0)
    model.fit(x, y, validation_split=0.2, epochs=100, callbacks=[stopper])
    stopper.best_epoch, stopper.stop_reason
    ```
    """

    def __init__(self, monitor="val_loss", min_delta=0, patience=0, verbose=0, mode="auto",
                 baseline=None, restore_best_weights=True, start_from_epoch=0,
                 check_finite=True, stopping_threshold=None, divergence_threshold=None,
                 min_delta_mode="absolute", graceful_signals=("SIGINT",)):
        super().__init__(monitor=monitor, min_delta=min_delta, patience=patience,
                         verbose=verbose, mode=mode, baseline=baseline,
                         restore_best_weights=restore_best_weights,
                         start_from_epoch=start_from_epoch)
        if min_delta_mode not in MIN_DELTA_MODES:
            raise ValueError(f"min_delta_mode must be 'absolute' or 'relative'; "
                             f"got {min_delta_mode!r}")
        self.check_finite = check_finite
        self.stopping_threshold = stopping_threshold
        self.divergence_threshold = divergence_threshold
        self.min_delta_mode = min_delta_mode
        unknown = [name for name in graceful_signals if name not in GRACEFUL_SIGNALS]
        if unknown:
            raise ValueError(f"graceful_signals takes {', '.join(GRACEFUL_SIGNALS)}; "
                             f"got {unknown}")
        self.graceful_signals = tuple(graceful_signals)
        self.stop_reason = None
        self.direction = None
        self.interrupted = False
        self.interrupt_signal = None
        self._previous_handlers = {}

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.stop_reason = None
        self.interrupted = False
        self.interrupt_signal = None
        self._catch_interrupts()

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor_op is None:
            self._set_monitor_op()
        current = self.get_monitor_value(logs)
        if current is None or epoch < self.start_from_epoch:
            return
        current = _scalar(current, self.monitor)
        finite = math.isfinite(current)
        self.wait += 1
        improved = finite and self._is_improvement(current, self.best)
        if improved:
            self.best = current
            self.best_epoch = epoch
            if self.restore_best_weights:
                self.best_weights = self._snapshot()
            if self.baseline is None or self._is_improvement(current, self.baseline):
                self.wait = 0
        if self.check_finite and not finite:
            self._stop(epoch, f"{self.monitor} = {current} is not finite")
        elif self.stopping_threshold is not None and self._at_least(current, self.stopping_threshold):
            self._stop(epoch, f"{self.monitor} = {current:.6g} reached the stopping threshold "
                              f"{self.stopping_threshold}")
        elif self.divergence_threshold is not None and not self._at_least(
                current, self.divergence_threshold):
            self._stop(epoch, f"{self.monitor} = {current:.6g} is worse than the divergence "
                              f"threshold {self.divergence_threshold}")
        elif not improved and self.wait >= self.patience and epoch > 0:
            self._stop(epoch, f"{self.monitor} did not improve for {self.wait} epochs")

    def on_train_end(self, logs=None):
        self.release_signals()
        if self.interrupted and self.stop_reason is None:
            self.stop_reason = ("interrupted (Ctrl-C)" if self.interrupt_signal == "SIGINT"
                                else f"interrupted ({self.interrupt_signal})")
        if self.stopped_epoch > 0 and self.verbose > 0:
            print(
                f"Epoch {self.stopped_epoch + 1}: early stopping: {self.stop_reason}")
        if not self.restore_best_weights:
            return
        if self.best_weights is None:
            if self.best is None and self.stopped_epoch > 0:
                warnings.warn(f"EarlyStopping: {self.monitor} was never finite; the model keeps "
                              "its last weights", stacklevel=2)
            return
        if self.verbose > 0:
            print(
                f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")
        self._restore(self.best_weights)

    def state_dict(self):
        """What a resumed run needs to stop, and restore, as this one would have: the best
        value, its epoch and weights, and the epochs waited."""
        return {"wait": self.wait, "stopped_epoch": self.stopped_epoch,
                "best": None if self.best is None else float(self.best),
                "best_epoch": self.best_epoch, "stop_reason": self.stop_reason,
                "best_weights": to_numpy(self.best_weights)}

    def load_state_dict(self, state):
        for key in ("wait", "stopped_epoch", "best", "best_epoch", "stop_reason",
                    "best_weights"):
            setattr(self, key, state[key])

    def _stop(self, epoch, reason):
        self.stopped_epoch = epoch
        self.stop_reason = reason
        self.model.stop_training = True

    def _set_monitor_op(self):
        # The project's one rule (`callbacks.monitor_mode`), shared with the other monitoring
        # callbacks. Keras keeps `min_delta` negative when minimising.
        self.direction = direction = resolve_mode(self.monitor, self.mode, self.model)
        self.monitor_op = keras.ops.less if direction == "min" else keras.ops.greater
        self.min_delta = -abs(self.min_delta) if direction == "min" else abs(self.min_delta)

    def _is_improvement(self, monitor_value, reference_value):
        if reference_value is None:
            return True
        # Keras stores min_delta with the sign of the direction (negative for "min").
        delta = self.min_delta * (abs(reference_value) if self.min_delta_mode == "relative" else 1)
        return self._better(monitor_value - delta, reference_value)

    def _at_least(self, value, threshold):
        """Whether `value` is as good as `threshold` or better."""
        return value == threshold or self._better(value, threshold)

    def _better(self, value, reference):
        """`monitor_op` in Keras's float type, without a backend op each time (about 0.5 ms on
        JAX, several times an epoch)."""
        floatx = np.dtype(keras.config.floatx()).type
        compare = operator.lt if self.direction == "min" else operator.gt
        return bool(compare(floatx(value), floatx(reference)))

    def _snapshot(self):
        model = self.model
        if not isinstance(model, keras.Model):  # anything with get/set_weights, as in Keras
            return model.get_weights()
        return snapshot(model.weights, replacements=_moving_averages(model))

    def _restore(self, values):
        if not isinstance(self.model, keras.Model):
            self.model.set_weights(values)
            return
        restore(self.model.weights, values)

    def _catch_interrupts(self):
        if threading.current_thread() is not threading.main_thread():
            return
        for name in self.graceful_signals:
            signum = getattr(signal, name)
            handler = signal.getsignal(signum)
            while isinstance(handler, _StopOnFirstInterrupt):
                # Left behind by a fit that ended in an exception (no on_train_end).
                handler = handler.previous
            if handler is not GRACEFUL_SIGNALS[name]:
                continue  # leave other handlers alone
            self._previous_handlers[signum] = handler
            signal.signal(signum, _StopOnFirstInterrupt(self, handler))

    def release_signals(self):
        """Gives the caught signals back to their previous handlers. `on_train_end` calls
        it; call it after a `fit` that raised (which calls no `on_train_end`), or Ctrl-C
        stays a request to stop a training that no longer runs."""
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}

    def __deepcopy__(self, memo):
        # KerasTuner copies callbacks for every trial: copy the settings, not the state.
        return type(self).from_config(self.get_config())

    def get_config(self):
        return {
            "monitor": self.monitor, "min_delta": abs(self.min_delta), "patience": self.patience,
            "verbose": self.verbose, "mode": self.mode, "baseline": self.baseline,
            "restore_best_weights": self.restore_best_weights,
            "start_from_epoch": self.start_from_epoch, "check_finite": self.check_finite,
            "stopping_threshold": self.stopping_threshold,
            "divergence_threshold": self.divergence_threshold,
            "min_delta_mode": self.min_delta_mode,
            "graceful_signals": list(self.graceful_signals),
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class _StopOnFirstInterrupt:
    """A signal handler: the first signal stops training gracefully; the handler before it
    (Ctrl-C: `KeyboardInterrupt`; SIGTERM: termination) takes the next one."""

    def __init__(self, callback, previous):
        self.callback = callback
        self.previous = previous

    def __call__(self, signum, frame):
        signal.signal(signum, self.previous)
        self.callback._previous_handlers.pop(signum, None)
        # Only flags, which Keras reads between steps: changing the model from a signal
        # handler, mid-step, crashed JAX ("Array has been deleted"). No batch hook reads them,
        # so Keras keeps dispatching steps without waiting for each one's logs (JAX).
        self.callback.model.stop_training = True
        self.callback.interrupted = True
        self.callback.interrupt_signal = signal.Signals(signum).name
        again = "Ctrl-C" if signum == signal.SIGINT else "the signal"
        print(f"\nInterrupted ({self.callback.interrupt_signal}): stopping after this batch "
              f"and restoring the best weights ({again} again to stop at once).")


def _scalar(value, name):
    """A logged value as a float; metrics like `F1Score` log one-element arrays."""
    array = np.asarray(value, dtype=np.float64)
    if array.size != 1:
        raise ValueError(f"EarlyStopping needs a single number to monitor; {name} has shape "
                         f"{array.shape}: pick one class or use an averaged metric")
    return float(array.reshape(()))


def _moving_averages(model):
    """`{id(trainable variable): its moving-average variable}` when the optimizer keeps one."""
    optimizer = getattr(model, "optimizer", None)
    if not getattr(optimizer, "use_ema", False) or not getattr(optimizer, "built", False):
        return {}
    # Keras keeps the averages in this private list, in the order of the trainable variables
    # (`finalize_variable_values` zips them the same way).
    averages = getattr(optimizer, "_model_variables_moving_average", [])
    return {id(variable): average for variable, average in zip(model.trainable_weights, averages)}
