"""LRFinder: the sweep, the recovered batch losses, divergence, restore, and the suggestion rules."""

import copy

import keras
import numpy as np
import pytest

import callbacks
from app.config import LR_FINDER_RULES
from callbacks import LRFinder, suggest_learning_rate


def offset_weight_model(learning_rate=1e-3):
    """loss = 10 + w with dL/dw = 1: SGD makes w fall by the rate, so each loss is known."""
    inputs = keras.Input(shape=(1,))
    outputs = keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")(inputs)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9),
                  loss=lambda y_true, y_pred: 10.0 + keras.ops.mean(y_pred))
    return model


def test_sweep_is_exponential_and_records_each_batch_loss():
    model = offset_weight_model()
    finder = LRFinder(min_lr=1e-4, max_lr=1e-2, num_steps=20, smoothing=0.0)
    # 30 batches over two epochs: the sweep stops after 20 updates.
    model.fit(np.ones((15, 1)), np.zeros((15, 1)), batch_size=1, epochs=2, shuffle=False,
              verbose=0, callbacks=[finder])
    expected_rates = np.geomspace(1e-4, 1e-2, 20)
    np.testing.assert_allclose(finder.learning_rates, expected_rates, rtol=1e-12)
    # SGD with momentum 0.9 on a constant gradient of 1: w after k updates, loss = 10 + w.
    velocity, weight, expected_losses = 0.0, 0.0, []
    for rate in expected_rates:
        expected_losses.append(10.0 + weight)
        velocity = 0.9 * velocity - rate
        weight += velocity
    np.testing.assert_allclose(finder.losses, expected_losses, rtol=1e-5)
    np.testing.assert_allclose(finder.smoothed_losses, finder.losses)  # smoothing=0


def test_weights_and_optimizer_state_are_restored():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.BatchNormalization(), keras.layers.Dense(3)])
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(True))
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int32") + (x[:, 1] > 0)
    model.fit(x, y, epochs=1, verbose=0)  # non-trivial optimizer state
    before_weights = [np.array(w) for w in model.get_weights()]
    before_optimizer = [keras.ops.convert_to_numpy(v).copy() for v in model.optimizer.variables]
    finder = LRFinder(min_lr=1e-5, max_lr=1.0, num_steps=8)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[finder])
    assert len(finder.losses) == 8
    for before, after in zip(before_weights, model.get_weights()):
        np.testing.assert_array_equal(before, after)
    for before, after in zip(before_optimizer, model.optimizer.variables):
        np.testing.assert_array_equal(before, keras.ops.convert_to_numpy(after))
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(1e-3)


def test_a_sweep_on_a_fresh_model_leaves_it_to_train_as_if_untouched():
    """TensorFlow builds the optimizer in the first step: the finder builds it first, so that
    the moments the sweep accumulated are reset too."""
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int32") + (x[:, 1] > 0)

    def trained(sweep_first):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                                  keras.layers.Dense(3)])
        model.compile(keras.optimizers.Adam(1e-2),
                      keras.losses.SparseCategoricalCrossentropy(True))
        if sweep_first:
            model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0,
                      callbacks=[LRFinder(min_lr=1e-4, max_lr=1e-1, num_steps=8)])
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        return model.get_weights()

    for swept, untouched in zip(trained(True), trained(False), strict=True):
        np.testing.assert_allclose(swept, untouched, rtol=1e-6, atol=1e-7)


def test_sweep_stops_when_the_loss_diverges(tmp_path):
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(3)])
    model.compile(keras.optimizers.SGD(1e-3), keras.losses.SparseCategoricalCrossentropy(True))
    rng = np.random.default_rng(1)
    x = rng.normal(size=(800, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int32") + (x[:, 1] > 0)
    finder = LRFinder(min_lr=1e-4, max_lr=1e4, num_steps=100)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[finder])
    assert finder.stopped_on_divergence
    assert 10 < len(finder.losses) < 100
    assert 1e-4 < finder.suggestion < 1e2
    finder.plot(tmp_path / "lr_find.png")
    assert (tmp_path / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_schedule_is_refused():
    model = offset_weight_model(callbacks.CosineAnnealing(0.1, t_max=10))
    with pytest.raises(ValueError, match="constant learning rate"):
        model.fit(np.ones((4, 1)), np.zeros((4, 1)), verbose=0, callbacks=[LRFinder()])


def test_suggestion_rules_on_a_curve_with_known_answers():
    rates = np.geomspace(1e-6, 1.0, 101)
    position = np.arange(101)
    # Flat, then falling fastest at index 40, lowest at index 70, then rising.
    losses = 2.0 - np.tanh((position - 40) / 8.0) + np.where(position > 70, (position - 70) ** 2 / 50, 0)
    losses[:10] = losses[10] + 1e-3 * np.arange(10, 0, -1)  # strictly decreasing start
    assert suggest_learning_rate(rates, losses, "steepest") == pytest.approx(rates[40])
    lowest = int(np.argmin(losses))
    assert suggest_learning_rate(rates, losses, "minimum") == pytest.approx(rates[lowest] / 10)
    # valley: the longest decreasing run is 0..lowest (n points); fastai's arithmetic takes
    # start − 1 + ⌊n/3⌋ + ⌊n/6⌋, about half-way down.
    points = lowest + 1
    assert suggest_learning_rate(rates, losses, "valley") == pytest.approx(
        rates[-1 + int(points / 3) + int(points / 3 / 2)])


def test_suggestions_ignore_the_non_finite_tail_and_need_three_points():
    rates = np.geomspace(1e-4, 1.0, 6)
    losses = [3.0, 2.5, 2.0, 1.0, np.inf, np.nan]
    assert suggest_learning_rate(rates, losses, "minimum") == pytest.approx(rates[3] / 10)
    assert suggest_learning_rate(rates[:2], losses[:2], "valley") is None


def test_rules_known_to_the_command_line_are_the_callbacks_rules():
    assert LR_FINDER_RULES == callbacks.lr_finder.SUGGESTION_RULES


def test_config_round_trip_and_deep_copy():
    finder = LRFinder(min_lr=1e-6, max_lr=1.0, num_steps=50, suggestion="steepest")
    assert copy.deepcopy(finder).get_config() == finder.get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(finder))
    assert restored.get_config() == finder.get_config()
    with pytest.raises(ValueError, match="min_lr < max_lr"):
        LRFinder(min_lr=1.0, max_lr=0.1)
