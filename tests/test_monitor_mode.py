"""One mode rule for every monitoring callback, checked against Keras's own `EarlyStopping`."""

import keras
import numpy as np
import pytest

import callbacks
from callbacks.monitor_mode import improves, resolve_mode

MONITORS = ["loss", "val_loss", "mse", "val_mse", "acc", "accuracy", "val_accuracy", "hinge",
            "f1_score", "precision", "val_recall", "auc"]


@pytest.fixture(scope="module")
def trained_model():
    """A model compiled with metrics of both directions, trained one epoch."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 3)), (rng.random(size=(40, 1)) > 0.5).astype("float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(loss="binary_crossentropy", optimizer="sgd", metrics=[
        "mse", "acc", "accuracy", "hinge", keras.metrics.F1Score(name="f1_score", average="micro"),
        keras.metrics.Precision(name="precision"), keras.metrics.Recall(name="recall"),
        keras.metrics.AUC(name="auc")])
    model.fit(x, y, validation_data=(x, y), epochs=1, verbose=0)
    return model


def keras_direction(model, monitor):
    """What Keras's own EarlyStopping decides for `monitor` in auto mode."""
    reference = keras.callbacks.EarlyStopping(monitor=monitor)
    reference.set_model(model)
    reference._set_monitor_op()
    return "min" if reference.monitor_op is keras.ops.less else "max"


@pytest.mark.parametrize("monitor", MONITORS)
def test_auto_mode_agrees_with_keras_on_every_metric(trained_model, monitor):
    assert resolve_mode(monitor, "auto", trained_model) == keras_direction(trained_model, monitor)


def test_every_callback_resolves_the_same_direction(trained_model, tmp_path):
    logs = {monitor: 0.5 for monitor in MONITORS}
    for monitor in MONITORS:
        expected = keras_direction(trained_model, monitor)
        checkpoint = callbacks.BestModelCheckpoint(tmp_path / "unused.keras",
                                                  monitor=monitor)
        guard = callbacks.NaNGuard(monitor=monitor, verbose=0)
        plateau = callbacks.ReduceLROnPlateau(monitor=monitor)
        stopper = callbacks.EarlyStopping(monitor=monitor)
        for callback in (checkpoint, guard, plateau, stopper):
            callback.set_model(trained_model)
        checkpoint.saved_model = _NotSaved()
        checkpoint.on_train_begin()
        guard.on_train_begin()
        checkpoint.on_epoch_end(0, logs)
        guard.on_epoch_end(0, logs)
        stopper._set_monitor_op()
        directions = {checkpoint.direction, guard.direction, plateau.direction,
                      stopper.direction}
        assert directions == {expected}, monitor


def test_a_metric_the_model_does_not_compute_is_refused_like_keras(trained_model):
    with pytest.raises(ValueError):
        keras_direction(trained_model, "unknown")
    with pytest.raises(ValueError, match="cannot tell whether 'unknown' should go up or down"):
        resolve_mode("unknown", "auto", trained_model)


def test_without_a_model_the_name_decides_and_explicit_modes_win():
    assert [resolve_mode(name) for name in ("val_loss", "val_accuracy", "val_auc", "mae")] == [
        "min", "max", "max", "min"]
    assert resolve_mode("val_accuracy", "min") == "min"
    assert callbacks.ReduceLROnPlateau(monitor="val_accuracy").direction == "max"
    with pytest.raises(ValueError, match="mode must be"):
        resolve_mode("val_loss", "lowest")


def test_improves_follows_the_direction_and_anything_beats_nothing():
    assert improves(0.3, None, "max") and improves(0.3, 0.4, "min")
    assert not improves(0.4, 0.4, "min") and not improves(0.3, 0.4, "max")


class _NotSaved:
    def save(self, path):
        path.write_bytes(b"")
