import copy

import keras
import numpy as np
import pytest

from callbacks import BestModelCheckpoint, LearningRateMonitor, MagnitudePruning


def tiny_model():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    return model


def replay(callback, model, values, monitor):
    """Feeds a metric sequence to a callback as if `fit` had logged it."""
    callback.set_model(model)
    callback.on_train_begin()
    saved = []
    for epoch, value in enumerate(values):
        before = getattr(callback, "best_epoch", None)
        callback.on_epoch_end(epoch, {monitor: value})
        saved.append(getattr(callback, "best_epoch", None) != before)
    return saved


# Keras 3.15's "auto" asks the compiled metric objects, so the reference gets the explicit mode.
@pytest.mark.parametrize(("monitor", "mode", "keras_mode"), [
    ("val_loss", "auto", "min"), ("val_accuracy", "auto", "max"), ("val_loss", "max", "max")])
def test_selects_the_same_epochs_as_keras_on_finite_values(tmp_path, monitor, mode, keras_mode):
    values = np.random.default_rng(0).uniform(size=12).tolist()
    model = tiny_model()
    ours = replay(BestModelCheckpoint(tmp_path / "ours.keras", monitor, mode), model, values, monitor)
    keras_checkpoint = keras.callbacks.ModelCheckpoint(
        tmp_path / "keras-{epoch}.keras", monitor=monitor, mode=keras_mode, save_best_only=True)
    replay(keras_checkpoint, model, values, monitor)
    keras_epochs = sorted(int(p.stem.split("-")[1]) for p in tmp_path.glob("keras-*.keras"))
    assert [epoch + 1 for epoch, saved in enumerate(ours) if saved] == keras_epochs


def test_non_finite_values_are_never_best(tmp_path):
    checkpoint = BestModelCheckpoint(tmp_path / "best.keras")
    saved = replay(checkpoint, tiny_model(), [np.nan, 2.0, np.inf, 1.0, np.nan], "val_loss")
    assert saved == [False, True, False, True, False]
    assert (checkpoint.best_epoch, checkpoint.best_value) == (4, 1.0)
    nothing = BestModelCheckpoint(tmp_path / "never.keras")
    replay(nothing, tiny_model(), [np.nan, np.nan], "val_loss")
    assert nothing.best_epoch is None and not (tmp_path / "never.keras").exists()


def test_saved_model_is_the_best_epochs(tmp_path):
    model = tiny_model()
    checkpoint = BestModelCheckpoint(tmp_path / "best.keras")
    checkpoint.set_model(model)
    checkpoint.on_train_begin()
    checkpoint.on_epoch_end(0, {"val_loss": 1.0})
    best_weights = [w.copy() for w in model.get_weights()]
    model.set_weights([w + 1 for w in best_weights])
    checkpoint.on_epoch_end(1, {"val_loss": 5.0})
    loaded = keras.saving.load_model(tmp_path / "best.keras")
    for ours, saved in zip(best_weights, loaded.get_weights()):
        np.testing.assert_array_equal(ours, saved)


def saved_variables(path):
    model = keras.saving.load_model(path)
    return [np.asarray(v) for v in (*model.variables, *model.optimizer.variables)]


def test_deferred_writing_writes_at_the_end_what_writing_at_each_best_wrote(tmp_path):
    """The reference is the same callback writing at every improvement, in the same `fit`."""
    deferred_path, eager_path = tmp_path / "deferred.keras", tmp_path / "eager.keras"
    seen_during_training = []

    class FileWatcher(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen_during_training.append(deferred_path.exists())

    x = np.random.default_rng(0).normal(size=(64, 2))
    y = x @ np.array([[1.0], [-2.0]])
    model = tiny_model()
    model.set_weights([np.zeros((2, 1)), np.zeros(1)])
    deferred = BestModelCheckpoint(deferred_path, defer_writing=True)
    eager = BestModelCheckpoint(eager_path)
    # Validated on half the targets: the weights pass the validation's best on their way.
    model.fit(x, y, validation_data=(x, y / 2), batch_size=8, epochs=8, verbose=0,
              callbacks=[deferred, eager, FileWatcher()])
    assert not any(seen_during_training)
    assert 1 < deferred.best_epoch == eager.best_epoch < 8
    for ours, reference in zip(saved_variables(deferred_path), saved_variables(eager_path),
                               strict=True):
        np.testing.assert_array_equal(ours, reference)
    # The model keeps its last weights.
    assert not np.array_equal(model.get_weights()[0],
                              keras.saving.load_model(eager_path).get_weights()[0])


def test_deferred_best_survives_in_the_state_and_is_written_by_the_resumed_run(tmp_path):
    model = tiny_model()
    interrupted = BestModelCheckpoint(tmp_path / "best.keras", defer_writing=True)
    interrupted.set_model(model)
    interrupted.on_epoch_end(0, {"val_loss": 1.0})
    best_weights = [w.copy() for w in model.get_weights()]
    state = interrupted.state_dict()
    assert not (tmp_path / "best.keras").exists()

    model.set_weights([w + 1 for w in best_weights])  # the resumed run trains on
    resumed = BestModelCheckpoint(tmp_path / "best.keras", defer_writing=True)
    resumed.set_model(model)
    resumed.load_state_dict(state)
    resumed.on_epoch_end(1, {"val_loss": 5.0})
    resumed.on_train_end()
    assert resumed.best_epoch == 1
    for ours, saved in zip(best_weights, keras.saving.load_model(tmp_path / "best.keras")
                           .get_weights()):
        np.testing.assert_array_equal(ours, saved)


def test_missing_monitor_is_named(tmp_path):
    checkpoint = BestModelCheckpoint(tmp_path / "b.keras", monitor="val_auc")
    checkpoint.set_model(tiny_model())
    with pytest.raises(KeyError, match="val_auc"):
        checkpoint.on_epoch_end(0, {"val_loss": 1.0})


def test_learning_rate_monitor_logs_the_rate_of_each_epochs_first_update():
    steps_per_epoch, epochs = 4, 3
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(schedule), "mse")
    x, y = np.ones((steps_per_epoch * 8, 2)), np.zeros((steps_per_epoch * 8, 1))
    history = model.fit(x, y, batch_size=8, epochs=epochs, verbose=0, callbacks=[LearningRateMonitor()])
    expected = [0.1 * 0.5 ** (epoch * steps_per_epoch) for epoch in range(epochs)]
    np.testing.assert_allclose(history.history["learning_rate"], expected, rtol=1e-6)


@pytest.mark.parametrize("callback", [
    LearningRateMonitor(log_key="lr"),
    BestModelCheckpoint("b.keras", "val_accuracy", defer_writing=True),
    MagnitudePruning(n_of_m=(2, 4), scope="global", begin_step=10, layer_names=["dense"])])
def test_callbacks_serialize_and_deep_copy(callback):
    clone = type(callback).from_config(callback.get_config())
    assert clone.get_config() == callback.get_config()
    assert copy.deepcopy(callback).get_config() == callback.get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(callback))
    assert type(restored) is type(callback)


def test_every_callback_survives_deepcopy_as_keras_tuner_copies_them():
    import callbacks

    data = (np.zeros((64, 2), "float32"), np.zeros((64, 1), "float32"))
    instances = [
        callbacks.EarlyStopping(patience=3), callbacks.ReduceLROnPlateau(patience=2),
        callbacks.LRFinder(num_steps=10), callbacks.NaNGuard(), callbacks.LearningRateMonitor(),
        callbacks.AccumulationScheduler({0: 2}), callbacks.GradientNoiseScale(data, 16),
        callbacks.BestModelCheckpoint("best.keras"), callbacks.MagnitudePruning(0.5),
    ]
    exported = {name for name in callbacks.__all__
                if isinstance(getattr(callbacks, name), type)
                and issubclass(getattr(callbacks, name), keras.callbacks.Callback)}
    assert exported == {type(instance).__name__ for instance in instances}
    for instance in instances:
        clone = copy.deepcopy(instance)
        assert type(clone) is type(instance) and clone.get_config() == instance.get_config()


class _EpochWeights(keras.callbacks.Callback):
    """Each epoch's weights, and what `checkpoint` keeps unwritten (until training ends)."""

    def __init__(self, checkpoint):
        super().__init__()
        self.checkpoint, self.weights = checkpoint, []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append([np.array(keras.ops.convert_to_numpy(weight))
                             for weight in self.model.weights])
        self.unwritten = self.checkpoint.unwritten


def test_the_callbacks_that_keep_an_epochs_weights_share_one_copy_on_jax(tmp_path):
    """Early stopping, the NaN guard and the best checkpoint keep the same epoch's weights: on
    JAX, whose arrays never change, in one read-only copy; elsewhere in one copy each."""
    from callbacks import EarlyStopping, NaNGuard, training_state

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 2)).astype("float32"), rng.normal(size=(64, 1)).astype("float32")
    model = tiny_model()
    stopper, guard = EarlyStopping(patience=5), NaNGuard(verbose=0)
    checkpoint = BestModelCheckpoint(tmp_path / "best.keras", defer_writing=True)
    recorder = _EpochWeights(checkpoint)
    copies_before = len(training_state._host_copies)
    model.fit(x, y, validation_data=(x, y), epochs=4, batch_size=16, verbose=0,
              callbacks=[stopper, guard, checkpoint, recorder])
    assert stopper.best_epoch + 1 == checkpoint.best_epoch
    kept = [stopper.best_weights, guard._best_weights,
            recorder.unwritten[:len(model.weights)]]  # then the optimizer's
    for values in kept:
        for value, expected in zip(values, recorder.weights[stopper.best_epoch]):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(value), expected)
    shared = all(a is b is c for a, b, c in zip(*kept))
    assert shared == (keras.backend.backend() == "jax")
    if shared:
        assert not any(value.flags.writeable for value in stopper.best_weights)
        # A copy is kept only while its array lives: after training, at most one per variable.
        assert len(training_state._host_copies) - copies_before <= len(model.variables) + len(
            model.optimizer.variables)
