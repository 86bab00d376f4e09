"""NaNGuard: stops at the first non-finite loss, restores the best epoch, names the layer."""

import keras
import numpy as np

import callbacks
from callbacks.nan_guard import MAX_CALLS_AHEAD


class Poison(keras.layers.Layer):
    """Multiplies by a non-trainable factor that a test can set to NaN."""

    def build(self, input_shape):
        self.factor = self.add_weight(shape=(), initializer="ones", trainable=False, name="factor")

    def call(self, x):
        return x * self.factor


class SquareRoot(keras.layers.Layer):
    """sqrt(x): NaN for negative inputs, a NaN the model itself makes."""

    def call(self, x):
        return keras.ops.sqrt(x)


def poisoned_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="first"),
                              Poison(name="poison"), keras.layers.Dense(1, name="head")])
    model.compile(keras.optimizers.SGD(0.01), "mse")
    return model


class PoisonAt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            self.model.get_layer("poison").factor.assign(float("nan"))


class RecordWeights(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.per_epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.per_epoch.append([np.array(w) for w in self.model.get_weights()])


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype("float32")
    return x, (x @ np.array([[1.0], [-1.0], [0.5]])).astype("float32")


def test_stops_restores_the_best_epoch_and_names_the_layer():
    x, y = data()
    model = poisoned_model()
    guard = callbacks.NaNGuard(monitor="loss", verbose=0)
    recorder = RecordWeights()
    history = model.fit(x, y, batch_size=16, epochs=6, verbose=0,
                        callbacks=[PoisonAt(3), guard, recorder])
    assert guard.triggered and len(history.history["loss"]) == 4
    assert guard.report["batch"] == 0 and guard.report["non_finite_gradient_layer"] == "first"
    assert guard.report["restored"] == "best epoch"
    best = int(np.argmin(history.history["loss"][:3]))
    restored = [np.array(w) for w in model.get_weights()]
    trainable = [w for w, v in zip(restored, model.weights) if v.trainable]
    best_trainable = [w for w, v in zip(recorder.per_epoch[best], model.weights) if v.trainable]
    for ours, expected in zip(trainable, best_trainable):
        np.testing.assert_array_equal(ours, expected)
    assert all(np.isfinite(w).all() for w in trainable)


def test_initial_weights_when_no_epoch_finished_and_probe_names_the_output():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="first"),
                              SquareRoot(name="root"), keras.layers.Dense(1, name="head")])
    model.compile(keras.optimizers.SGD(0.01), "mse")
    initial = [np.array(w) for w in model.get_weights()]
    x, y = data()
    guard = callbacks.NaNGuard(probe_data=x[:8], verbose=0)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[guard])
    assert guard.triggered and guard.report["restored"] == "initial weights"
    assert guard.report["non_finite_output_layer"] == "root"
    for before, after in zip(initial, model.get_weights()):
        np.testing.assert_array_equal(before, np.array(after))


def test_quiet_on_a_healthy_run_and_config():
    x, y = data()
    model = poisoned_model()
    guard = callbacks.NaNGuard(monitor="loss", verbose=0)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[guard])
    assert not guard.triggered and guard.report is None
    assert keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(guard)).get_config() == guard.get_config()


def test_asynchronous_stops_a_few_calls_later_with_the_same_weights_without_waiting():
    x, y = data()
    steps = 1 if keras.backend.backend() == "torch" else 2  # Keras 3.15 refuses more on torch
    runs = {}
    for asynchronous in (False, True):
        model = poisoned_model()
        model.steps_per_execution = steps
        guard = callbacks.NaNGuard(monitor="loss", verbose=0, asynchronous=asynchronous)
        # 32 batches an epoch: an asynchronous stop has calls left to run ahead into.
        history = model.fit(np.tile(x, (8, 1)), np.tile(y, (8, 1)), batch_size=16, epochs=6,
                            verbose=0, callbacks=[PoisonAt(3), guard])
        runs[asynchronous] = guard.report, model.get_weights(), history.history["loss"]
    (exact, exact_weights, exact_losses), (report, weights, losses) = runs[False], runs[True]
    assert report["batch"] == exact["batch"] == steps - 1  # the first call of epoch 4
    assert report["restored"] == exact["restored"] == "best epoch"
    assert exact["batches_after"] == 0 and exact["non_finite_gradient_layer"] == "first"
    assert 0 <= report["batches_after"] <= MAX_CALLS_AHEAD * steps
    assert report["non_finite_gradient_layer"] == (None if report["batches_after"] else "first")
    assert losses[:3] == exact_losses[:3] and len(losses) == 4
    for ours, expected in zip(weights, exact_weights):
        np.testing.assert_array_equal(ours, expected)
    # Keras's own decision: only the synchronous guard makes it wait for every call (Keras
    # never runs ahead on TensorFlow).
    for asynchronous in (False, True):
        callback_list = keras.callbacks.CallbackList(
            [callbacks.NaNGuard(asynchronous=asynchronous)], model=model)
        assert callback_list._async_train is (asynchronous
                                              and keras.backend.backend() != "tensorflow")
