"""GradientAccumulation: K batches of b equal one step on the full batch of K·b."""

import copy

import keras
import numpy as np
import pytest

import callbacks
from callbacks import AccumulationScheduler, GradientAccumulation

OPTIMIZERS = {
    "sgd": lambda: keras.optimizers.SGD(0.1),
    "sgd-momentum": lambda: keras.optimizers.SGD(0.05, momentum=0.9),
    "adam": lambda: keras.optimizers.Adam(1e-2),
    "adamw-decay": lambda: keras.optimizers.AdamW(1e-2, weight_decay=0.1),
    "adam-clipnorm": lambda: keras.optimizers.Adam(1e-2, clipnorm=0.05),
    "sgd-global-clip-decay": lambda: keras.optimizers.SGD(0.1, global_clipnorm=0.1,
                                                          weight_decay=0.01),
}


def data(samples, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(samples, 4)).astype("float32")
    y = (x @ rng.normal(size=(4, 2)) + 0.1 * rng.normal(size=(samples, 2))).astype("float32")
    return x, y


def model_with(optimizer):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"),
                              keras.layers.Dense(2)])
    model.compile(optimizer=optimizer, loss="mse")
    return model


def weights(model):
    return [np.asarray(w) for w in model.get_weights()]


# 100: a short last batch of 4 samples; 96, the even case, only in the whole suite.
@pytest.mark.parametrize("samples", [pytest.param(96, marks=pytest.mark.slow), 100])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_accumulated_updates_equal_full_batch_updates(name, samples):
    x, y = data(samples)
    full = model_with(OPTIMIZERS[name]())
    full.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    accumulated = model_with(GradientAccumulation(OPTIMIZERS[name](), steps=4))
    accumulated.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0,
                    callbacks=[AccumulationScheduler(samples_per_epoch=samples)])
    for ours, reference in zip(weights(accumulated), weights(full)):
        np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)
    assert int(accumulated.optimizer.iterations) == int(full.optimizer.iterations)


def test_schedules_count_updates_not_batches():
    schedule = callbacks.StepDecay(0.1, step_size=2, gamma=0.5)
    x, y = data(64)
    model = model_with(GradientAccumulation(keras.optimizers.SGD(schedule), steps=4))
    history = model.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0,
                        callbacks=[AccumulationScheduler(), callbacks.LearningRateMonitor()])
    # 16 batches = 4 updates per epoch: the rate halves every 2 updates, i.e. twice per epoch.
    assert history.history["learning_rate"] == pytest.approx([0.1, 0.025, 0.00625])
    assert int(model.optimizer.iterations) == 12


def test_without_the_callback_windows_straddle_epochs_and_leftovers_wait():
    x, y = data(40)
    model = model_with(GradientAccumulation(keras.optimizers.SGD(0.1), steps=4))
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)  # 5 batches
    assert int(model.optimizer.iterations) == 1
    model.optimizer.flush()  # what AccumulationScheduler does at the end of each epoch
    assert int(model.optimizer.iterations) == 2


def test_scheduler_grows_the_window():
    x, y = data(64)
    model = model_with(GradientAccumulation(keras.optimizers.SGD(0.1), steps=1))
    scheduler = AccumulationScheduler({0: 1, 1: 2, 2: 8})
    updates = []

    class CountUpdates(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            updates.append(int(self.model.optimizer.iterations))

    model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0,
              callbacks=[scheduler, CountUpdates()])
    assert np.diff([0] + updates).tolist() == [8, 4, 1]


def test_moving_average_is_updated_once_per_update():
    x, y = data(64)
    inner = keras.optimizers.SGD(0.1, use_ema=True, ema_momentum=0.5)
    model = model_with(GradientAccumulation(inner, steps=4))
    reference = model_with(keras.optimizers.SGD(0.1, use_ema=True, ema_momentum=0.5))
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0,
              callbacks=[AccumulationScheduler()])
    reference.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    for ours, theirs in zip(weights(model), weights(reference)):  # EMA weights after fit
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_batch_normalization_uses_each_batch_and_updates_per_batch():
    keras.utils.set_random_seed(0)
    x, y = data(32)
    layer = keras.layers.BatchNormalization(momentum=0.5)
    model = keras.Sequential([keras.Input((4,)), layer, keras.layers.Dense(2)])
    model.compile(GradientAccumulation(keras.optimizers.SGD(0.0), steps=4), "mse")
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0,
              callbacks=[AccumulationScheduler()])
    expected = np.zeros(4)
    for start in range(0, 32, 8):  # four moving-average updates, one per batch of 8
        expected = 0.5 * expected + 0.5 * x[start:start + 8].mean(axis=0)
    np.testing.assert_allclose(np.asarray(layer.moving_mean), expected, rtol=1e-5, atol=1e-6)


def test_saves_loads_and_copies(tmp_path):
    x, y = data(32)
    model = model_with(GradientAccumulation(keras.optimizers.Adam(1e-3), steps=2))
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[AccumulationScheduler()])
    model.save(tmp_path / "model.keras")
    restored = keras.saving.load_model(tmp_path / "model.keras")
    assert isinstance(restored.optimizer, GradientAccumulation) and restored.optimizer.steps == 2
    scheduler = AccumulationScheduler({0: 2, 5: 4}, samples_per_epoch=100)
    assert copy.deepcopy(scheduler).get_config() == scheduler.get_config()
    restored_scheduler = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(scheduler))
    assert restored_scheduler.get_config() == scheduler.get_config()
    with pytest.raises(ValueError, match="steps must be an integer"):
        GradientAccumulation(keras.optimizers.SGD(), steps=0)


def test_adaptive_scheduler_grows_toward_the_noise_scale():
    x, y = data(256)
    model = model_with(GradientAccumulation(keras.optimizers.SGD(0.05), steps=1))

    class FakeNoiseScale(keras.callbacks.Callback):  # B = 64, then 500: K = 64/16 = 4, then 8
        def on_epoch_end(self, epoch, logs=None):
            logs["noise_scale"] = [64.0, 500.0, 20.0][epoch]

    history = model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[
        FakeNoiseScale(), AccumulationScheduler(samples_per_epoch=256, adaptive=True, max_steps=8)])
    assert history.history["accumulation_steps"] == [4, 8, 8]  # capped, and never shrinks


def test_adaptive_scheduler_follows_the_real_estimator():
    x, y = data(512)
    model = model_with(GradientAccumulation(keras.optimizers.SGD(0.05), steps=1))
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[
        callbacks.GradientNoiseScale((x, y), small_batch_size=16),
        AccumulationScheduler(samples_per_epoch=512, adaptive=True)])
    expected = max(1, min(64, round(history.history["noise_scale"][0] / 8)))
    assert history.history["accumulation_steps"][0] == expected
