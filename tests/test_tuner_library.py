"""Library use: a user's own `keras_tuner.RandomSearch` with the project's callbacks, schedules,
optimizers and losses, on the backend under test."""

import keras
import keras_tuner
import numpy as np
import pytest

import callbacks


def make_data(n=1024, features=12, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.normal(size=(n, features)).astype("float32") + 3.0 * y[:, None]
    return x, y


def build(hp):
    """A user's build function: the project's schedule, optimizer wrappers and loss."""
    steps_per_epoch = 768 // 32
    schedule = callbacks.Warmup(
        callbacks.CosineAnnealing(hp.Float("lr", 1e-2, 1e-1, sampling="log"),
                                  t_max=6 * steps_per_epoch),
        warmup_steps=steps_per_epoch)
    optimizer = callbacks.GradientAccumulation(
        callbacks.Lookahead(callbacks.RAdam(learning_rate=schedule)), steps=2)
    model = keras.Sequential([
        keras.Input((12,)),
        keras.layers.Dense(hp.Choice("width", [8, 16]), activation="relu"),
        keras.layers.Dense(3),
    ])
    model.compile(optimizer=optimizer,
                  loss=callbacks.SparseCategoricalCrossentropy(from_logits=True,
                                                               label_smoothing=0.1),
                  metrics=["accuracy"])
    return model


@pytest.mark.slow
def test_a_users_random_search_runs_with_the_projects_callbacks(tmp_path):
    x, y = make_data()
    stopper = callbacks.EarlyStopping(monitor="val_loss", patience=2)
    plateau = callbacks.ReduceLROnPlateau(monitor="val_loss", patience=1, factor=0.5)
    monitor = callbacks.LearningRateMonitor()
    tuner = keras_tuner.RandomSearch(build, objective="val_loss", max_trials=3, seed=1,
                                     directory=tmp_path, project_name="user")
    tuner.search(x[:768], y[:768], validation_data=(x[768:], y[768:]), epochs=6,
                 batch_size=32, callbacks=[stopper, plateau, monitor], verbose=0)

    trials = tuner.oracle.trials.values()
    assert len(trials) == 3
    assert all(trial.status == "COMPLETED" for trial in trials), [t.message for t in trials]
    # KerasTuner copies callbacks for each trial: the user's own instances stay unused.
    assert stopper.model is None and plateau.model is None and monitor.model is None
    best = tuner.get_best_models(1)[0]
    assert isinstance(best.optimizer, callbacks.GradientAccumulation)
    loss, accuracy = best.evaluate(x[768:], y[768:], verbose=0)
    assert np.isfinite(loss) and accuracy > 0.6
    # The best model saves and loads with the project's objects registered.
    path = tmp_path / "best.keras"
    best.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(reloaded.predict(x[:8], verbose=0), best.predict(x[:8], verbose=0),
                               rtol=1e-5, atol=1e-6)
