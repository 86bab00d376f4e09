"""EarlyStopping: Keras's own cases, NaN safety, thresholds, EMA, Ctrl-C, copies."""

import copy
import os
import signal

import keras
import keras.src.callbacks
import numpy as np
import pytest
from keras.src.callbacks import early_stopping_test as keras_cases

import callbacks
from tests.helpers import WeightRecorder, constant_gradient_model


class TestKerasOwnCasesAgainstOurs(keras_cases.EarlyStoppingTest):
    """Keras 3.15's early-stopping test cases, run with our class in place of Keras's."""

    @pytest.fixture(autouse=True)
    def _ours_in_place_of_keras(self, monkeypatch):
        monkeypatch.setattr(keras.src.callbacks, "EarlyStopping", callbacks.EarlyStopping)


class FeedMetric(keras.callbacks.Callback):
    """Puts a scripted `val_loss` into the logs, before the callbacks that read it."""

    def __init__(self, values):
        super().__init__()
        self.values = values

    def on_epoch_end(self, epoch, logs=None):
        logs["val_loss"] = self.values[epoch]


def train(stopper, values, extra=()):
    """One SGD update of -0.1 per epoch: the weight after epoch e is -0.1·(e + 1)."""
    model = constant_gradient_model(0.1)
    recorder = WeightRecorder()
    history = model.fit(np.ones((1, 1)), np.zeros((1, 1)), epochs=len(values), verbose=0,
                        callbacks=[FeedMetric(values), recorder, stopper, *extra])
    final = float(keras.ops.convert_to_numpy(model.trainable_weights[0])[0, 0])
    return final, recorder.weights, len(history.epoch)


def weight_after(epoch):
    return -0.1 * (epoch + 1)


def test_restores_the_best_epoch_by_default():
    final, _, epochs = train(callbacks.EarlyStopping(patience=2), [3, 2, 1, 1.5, 1.6, 0.5])
    assert epochs == 5 and final == pytest.approx(weight_after(2))


def test_a_nan_first_epoch_never_becomes_best_where_keras_restores_it():
    values = [float("nan"), 0.5, 0.4, 0.45, 0.46, 0.47]
    ours = callbacks.EarlyStopping(patience=2, check_finite=False)
    final, _, _ = train(ours, values)
    assert ours.best_epoch == 2 and final == pytest.approx(weight_after(2))
    theirs = keras.callbacks.EarlyStopping(patience=2, restore_best_weights=True)
    final, _, _ = train(theirs, values)
    assert theirs.best_epoch == 0 and final == pytest.approx(weight_after(0))


def test_check_finite_stops_at_once_and_restores():
    stopper = callbacks.EarlyStopping(patience=10)
    final, _, epochs = train(stopper, [1.0, 0.5, float("inf"), 0.1, 0.1])
    assert epochs == 3 and "not finite" in stopper.stop_reason
    assert final == pytest.approx(weight_after(1))


def test_stopping_and_divergence_thresholds():
    reached = callbacks.EarlyStopping(patience=10, stopping_threshold=0.3)
    _, _, epochs = train(reached, [1.0, 0.5, 0.3, 0.2])
    assert epochs == 3 and "stopping threshold" in reached.stop_reason
    diverged = callbacks.EarlyStopping(patience=10, divergence_threshold=5.0)
    final, _, epochs = train(diverged, [1.0, 0.5, 7.0, 0.2])
    assert epochs == 3 and "divergence threshold" in diverged.stop_reason
    assert final == pytest.approx(weight_after(1))
    accuracy = callbacks.EarlyStopping(monitor="val_loss", mode="max", stopping_threshold=0.9)
    _, _, epochs = train(accuracy, [0.5, 0.95, 0.97])
    assert epochs == 2


def test_relative_min_delta():
    # 1% of the best: 9.95 after 10 is not an improvement, 9.8 is.
    relative = callbacks.EarlyStopping(patience=1, min_delta=0.01, min_delta_mode="relative")
    _, _, epochs = train(relative, [10.0, 9.95, 9.8, 9.7])
    assert epochs == 2 and relative.best_epoch == 0
    absolute = callbacks.EarlyStopping(patience=1, min_delta=0.01)
    _, _, epochs = train(absolute, [10.0, 9.95, 9.8, 9.7])
    assert epochs == 4


def test_restores_the_moving_average_of_the_best_epoch():
    class RecordAverages(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.averages = []

        def on_epoch_end(self, epoch, logs=None):
            average = self.model.optimizer._model_variables_moving_average[0]
            self.averages.append(float(keras.ops.convert_to_numpy(average)[0, 0]))

    def run(stopper):
        model = constant_gradient_model(0.1)
        model.compile(optimizer=keras.optimizers.SGD(0.1, use_ema=True, ema_momentum=0.5),
                      loss=lambda y_true, y_pred: keras.ops.mean(y_pred))
        averages = RecordAverages()
        model.fit(np.ones((1, 1)), np.zeros((1, 1)), epochs=6, verbose=0,
                  callbacks=[FeedMetric([3, 2, 1, 1.5, 1.6, 1.7]), averages, stopper])
        return float(keras.ops.convert_to_numpy(model.trainable_weights[0])[0, 0]), averages

    final, averages = run(callbacks.EarlyStopping(patience=2))
    assert final == pytest.approx(averages.averages[2])  # best epoch 2's average
    keras_final, _ = run(keras.callbacks.EarlyStopping(patience=2, restore_best_weights=True))
    assert keras_final == pytest.approx(weight_after(2))  # Keras: the raw weights instead


def test_first_ctrl_c_stops_after_the_batch_and_restores():
    class CtrlC(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 3:
                os.kill(os.getpid(), signal.SIGINT)

    stopper = callbacks.EarlyStopping(patience=10)
    final, _, epochs = train(stopper, [3, 2, 1, 1.5, 1.6, 1.7, 1.8], extra=[CtrlC()])
    assert stopper.interrupted and stopper.stop_reason == "interrupted (Ctrl-C)"
    # The handler sets Keras's `stop_training`, which Keras reads after the epoch in which
    # the signal came (the 4th): no fifth epoch begins.
    assert epochs == 4
    assert final == pytest.approx(weight_after(2))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_sigterm_stops_gracefully_only_when_asked():
    class Terminate(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as a launched process has it
    stopper = callbacks.EarlyStopping(patience=10, graceful_signals=("SIGINT", "SIGTERM"))
    final, _, epochs = train(stopper, [3, 2, 1, 1.5, 1.6], extra=[Terminate()])
    assert stopper.interrupted and stopper.interrupt_signal == "SIGTERM"
    assert stopper.stop_reason == "interrupted (SIGTERM)" and epochs == 2
    assert final == pytest.approx(weight_after(1))  # the best epoch so far, restored
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    # By default SIGTERM is left alone (it still terminates a plain Keras script).
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        stopper = callbacks.EarlyStopping(patience=10)
        train(stopper, [3, 2, 1, 1.5], extra=[Terminate()])
        assert seen == [signal.SIGTERM] and not stopper.interrupted
    finally:
        signal.signal(signal.SIGTERM, previous)
    with pytest.raises(ValueError, match="graceful_signals takes SIGINT, SIGTERM"):
        callbacks.EarlyStopping(graceful_signals=("SIGHUP",))


def test_copies_and_config_hold_settings_not_state():
    stopper = callbacks.EarlyStopping(monitor="val_loss", patience=4, min_delta=0.01,
                                      divergence_threshold=0.2, min_delta_mode="relative")
    train(stopper, [0.5, 0.6])
    clone = copy.deepcopy(stopper)
    assert clone.get_config() == stopper.get_config() and clone.best_weights is None
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(stopper))
    assert restored.get_config() == stopper.get_config()
    assert isinstance(stopper, keras.callbacks.EarlyStopping)
    with pytest.raises(ValueError, match="min_delta_mode"):
        callbacks.EarlyStopping(min_delta_mode="percent")
