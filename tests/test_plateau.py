"""ReduceLROnPlateau: torch's decisions, with a constant learning rate and under a schedule."""

import copy

import keras
import numpy as np
import pytest
import torch

import callbacks
from tests.helpers import WeightRecorder, constant_gradient_model

SETTINGS = [
    dict(mode="min", factor=0.5, patience=2, threshold=1e-4, threshold_mode="rel", cooldown=0),
    dict(mode="min", factor=0.1, patience=0, threshold=0.05, threshold_mode="abs", cooldown=2),
    dict(mode="max", factor=0.3, patience=3, threshold=0.01, threshold_mode="rel", cooldown=1),
    dict(mode="max", factor=0.7, patience=1, threshold=0.0, threshold_mode="abs", cooldown=0,
         min_lr=0.05),
    dict(mode="min", factor=0.5, patience=1, threshold=1e-3, threshold_mode="rel", cooldown=0,
         min_lr=0.2),
]


def metric_sequence(seed, length=60):
    """A noisy curve with plateaus, repeats and a NaN: what validation losses look like."""
    rng = np.random.default_rng(seed)
    values = np.cumsum(rng.normal(-0.02, 0.05, size=length)) + 2.0
    values[rng.integers(0, length, size=8)] = values[5]  # exact repeats
    values[rng.integers(10, length)] = np.nan
    return [float(value) for value in values]


def torch_plateau_rates(settings, sequence, learning_rate=1.0):
    """The learning rate after each `step(metric)` of torch's ReduceLROnPlateau."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=learning_rate)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, **settings)
    rates = []
    for value in sequence:
        scheduler.step(value)
        rates.append(optimizer.param_groups[0]["lr"])
    return np.array(rates)


def replayed_rates(callback, sequence, learning_rate=1.0):
    """The learning rate after each epoch when `callback` sees `sequence` as its monitor."""
    model = constant_gradient_model(learning_rate)
    model.optimizer.build(model.trainable_variables)
    callback.set_model(model)
    callback.on_train_begin()
    rates = []
    for epoch, value in enumerate(sequence):
        callback.on_epoch_end(epoch, {"val_loss": value})
        rates.append(float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)))
    return np.array(rates)


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("seed", range(4))
def test_reductions_equal_torch_on_random_sequences(settings, seed):
    sequence = metric_sequence(seed)
    if settings["mode"] == "max":
        sequence = [-value for value in sequence]
    reference = torch_plateau_rates(settings, sequence)
    assert len(set(reference)) > 1  # the sequence does trigger reductions
    ours = replayed_rates(callbacks.ReduceLROnPlateau(**settings), sequence)
    np.testing.assert_allclose(ours, reference, rtol=1e-6)


def test_under_a_schedule_it_scales_the_schedule_in_the_compiled_step():
    # One update per epoch, and an update of exactly -lr: the weights show each epoch's rate.
    epochs, settings = 30, dict(factor=0.5, patience=2, min_lr=2e-3)
    sequence = [1.0] * epochs  # never improves after the first epoch
    schedule = callbacks.CosineAnnealing(0.1, t_max=epochs)
    model = constant_gradient_model(schedule)
    recorder = WeightRecorder()

    class FeedMetric(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["val_loss"] = sequence[epoch]

    plateau = callbacks.ReduceLROnPlateau(**settings)
    model.fit(np.ones((1, 1)), np.zeros((1, 1)), epochs=epochs, verbose=0,
              callbacks=[FeedMetric(), plateau, recorder])
    applied = -np.diff(np.array(recorder.weights, dtype=np.float64))

    # Expected: torch's reduction decisions applied as factors on the cosine schedule.
    factors = torch_plateau_rates(dict(factor=0.5, patience=2), sequence)
    raw = np.array([float(keras.ops.convert_to_numpy(schedule(step))) for step in range(epochs)])
    scale = np.concatenate([[1.0], factors[:-1]])
    expected = np.minimum(raw, np.maximum(raw * scale, settings["min_lr"]))
    assert scale[-1] < 0.1  # several reductions happened
    np.testing.assert_allclose(applied, expected, rtol=1e-4, atol=1e-7)
    assert isinstance(model.optimizer._learning_rate, callbacks.ScaledSchedule)


def test_with_a_constant_rate_it_assigns_the_optimizer_rate_during_fit():
    epochs = 12
    model = constant_gradient_model(0.1)
    recorder = WeightRecorder()
    plateau = callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1)
    # The loss (the weight itself) keeps falling, then is held back by a huge threshold.
    plateau.threshold, plateau.threshold_mode = 10.0, "abs"
    model.fit(np.ones((1, 1)), np.zeros((1, 1)), epochs=epochs, verbose=0,
              callbacks=[plateau, recorder])
    applied = -np.diff(np.array(recorder.weights, dtype=np.float64))
    expected = [0.1, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.0125, 0.0125, 0.00625, 0.00625, 0.003125]
    np.testing.assert_allclose(applied, expected, rtol=1e-5)


def test_missing_monitor_warns_and_changes_nothing():
    model = constant_gradient_model(0.1)
    model.optimizer.build(model.trainable_variables)
    plateau = callbacks.ReduceLROnPlateau(monitor="val_auc", patience=0)
    plateau.set_model(model)
    plateau.on_train_begin()
    before = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    for epoch in range(3):
        with pytest.warns(UserWarning, match="'val_auc' is not in the logs"):
            plateau.on_epoch_end(epoch, {"loss": 1.0})
    # With patience 0, three epochs without improvement would have cut the rate each time.
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == before
    assert (plateau.best, plateau.bad_epochs, plateau.cooldown_counter) == (None, 0, 0)


def test_auto_mode_and_copies_and_config():
    plateau = callbacks.ReduceLROnPlateau(monitor="val_accuracy", mode="auto", patience=3)
    assert plateau.direction == "max"
    clone = copy.deepcopy(plateau)
    assert clone.get_config() == plateau.get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(plateau))
    assert restored.get_config() == plateau.get_config()
    with pytest.raises(ValueError, match="factor must be in"):
        callbacks.ReduceLROnPlateau(factor=1.0)
