"""`python -m app fit` and `evaluate` end to end on the backend under test."""

import json
import signal

import keras
import numpy as np
import pytest
import yaml

import app.engine
import app.lockstep
import app.rundir
from app.config import load_config
from app.data import load_dataset
from app.reporting import read_history_csv
from callbacks import NaNGuard
from tests.helpers import BACKEND, fit, fit_arguments, only_run, run_subprocess

RUN_FILES = {"config.yaml", "classes.json", "history.csv", "best.keras", "metrics.json", "curves.png"}


def test_fit_on_digits_writes_a_complete_run(run_cli, runs_dir):
    out = fit(run_cli)
    run = only_run(runs_dir)
    assert run.name.startswith("mlp-teacher-")
    assert {path.name for path in run.iterdir()} == RUN_FILES
    assert str(run) in out and "majority baseline" in out

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["backend"] == BACKEND
    assert metrics["test"]["accuracy"] > 0.9
    assert metrics["baseline"]["majority_class_accuracy"] < 0.15
    assert metrics["samples"] == {"train": 1257, "validation": 270, "test": 270}
    assert metrics["data_report"] == {}  # digits: nothing skipped, no copies across splits
    assert metrics["versions"]["keras"] == keras.__version__

    history = read_history_csv(run / "history.csv")
    assert len(history["epoch"]) == metrics["epochs_run"] <= 8
    assert history["learning_rate"] == pytest.approx([1e-3] * metrics["epochs_run"])
    best = metrics["best"]
    assert best["val_loss"] == pytest.approx(min(history["val_loss"]), rel=1e-6)
    assert history["val_loss"][best["epoch"] - 1] == pytest.approx(best["val_loss"], rel=1e-6)
    assert (run / "curves.png").read_bytes().startswith(b"\x89PNG")

    # The resolved configuration repeats the run: every default is filled in.
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["schedule"]["lr"] == pytest.approx(1e-3)
    assert resolved["training"]["epochs"] == 8 and resolved["output"]["name"] == "mlp-teacher"
    config = load_config(run / "config.yaml")

    # best.keras is the best epoch's model: it reproduces the recorded test and validation scores.
    model = keras.saving.load_model(run / "best.keras")
    dataset = load_dataset(config.data, seed=config.seed)
    val_loss, _ = model.evaluate(dataset.x_val, dataset.y_val, verbose=0)
    assert val_loss == pytest.approx(best["val_loss"], rel=1e-4)
    code, out, _ = run_cli("evaluate", str(run))
    assert code == 0
    assert f"accuracy {metrics['test']['accuracy']:.4f}" in out


def test_test_split_is_evaluated_exactly_once_and_never_during_training(run_cli, monkeypatch):
    x_test = load_dataset(load_config().data, seed=load_config().seed).x_test
    test_rows = {row.tobytes() for row in x_test}
    seen = []
    original_fit, original_evaluate = keras.Model.fit, keras.Model.evaluate

    def spy_fit(model, x, validation_data=None, **kwargs):
        # `Batches` (which TensorFlow reads in its graph), held by its callback `SetEpoch`.
        training = next(callback.batches for callback in kwargs["callbacks"]
                        if hasattr(callback, "batches"))
        seen.append(("fit", any(row.tobytes() in test_rows for row in training.features)))
        seen.append(("validation", any(row.tobytes() in test_rows for row in validation_data[0])))
        return original_fit(model, x, validation_data=validation_data, **kwargs)

    def spy_evaluate(model, x, y, **kwargs):
        if x.shape == x_test.shape and np.array_equal(x, x_test):
            seen.append(("evaluate test", True))
        return original_evaluate(model, x, y, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", spy_fit)
    monkeypatch.setattr(keras.Model, "evaluate", spy_evaluate)
    fit(run_cli, "training.epochs=2")
    assert seen == [("fit", False), ("validation", False), ("evaluate test", True)]


@pytest.mark.slow
def test_cnn_student_with_schedule_smoothing_and_clipping(run_cli, runs_dir):
    fit(run_cli, "model.architecture=cnn", "model.size=student", "model.width=null",
        "optimizer.name=sgd", "schedule.lr=0.05", "optimizer.momentum=0.9",
        "optimizer.nesterov=true", "schedule.name=cosine", "schedule.warmup=1",
        "training.label_smoothing=0.1", "training.global_clip_norm=1.0",
        "early_stopping.enabled=false", "training.epochs=4", "output.name=cnn",
        "output.timestamp=false")
    run = runs_dir / "cnn"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs_run"] == 4
    assert metrics["test"]["accuracy"] > 0.5
    rates = read_history_csv(run / "history.csv")["learning_rate"]
    # Warm-up starts at 0 for the first epoch, then the cosine decays.
    assert rates[0] == 0.0 and rates[1] == pytest.approx(0.05, rel=1e-5) and rates[1] > rates[2] > rates[3]
    import callbacks

    model = keras.saving.load_model(run / "best.keras")
    assert isinstance(model.loss, callbacks.SparseCategoricalCrossentropy)
    assert model.loss.label_smoothing == 0.1


@pytest.mark.slow
def test_same_config_and_seed_give_the_same_metrics(run_cli, runs_dir):
    fit(run_cli, "training.epochs=3", "output.name=a")
    fit(run_cli, "training.epochs=3", "output.name=b")
    first, second = (read_history_csv(next(runs_dir.glob(f"{name}-*")) / "history.csv") for name in "ab")
    for key in first:
        np.testing.assert_allclose(first[key], second[key], rtol=1e-6, err_msg=key)


def test_an_exception_in_training_leaves_no_run_directory(run_cli, runs_dir, monkeypatch):
    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt

    train_model = app.engine.train_model
    monkeypatch.setattr(app.engine, "train_model", lambda *args, **kwargs: train_model(
        *args, extra_callbacks=[Interrupt()]))
    code, _, err = run_cli(*fit_arguments())
    assert code == 130
    assert not runs_dir.exists()  # not even an empty runs/ of a first, failed run
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C works again


@pytest.mark.parametrize("guard, message", [
    ("true", "error: training diverged in epoch 1, batch "),
    ("exact", "error: training diverged in epoch 1, batch "),
    ("false", "error: val_loss was never finite"),
])
def test_divergence_is_a_clear_error_and_leaves_nothing(run_cli, runs_dir, guard, message):
    code, _, err = run_cli(*fit_arguments(
        "optimizer.name=sgd", "schedule.lr=1e30", "model.normalization=none",
        "training.epochs=2", f"training.nan_guard={guard}"))
    assert code == 2
    assert err.startswith(message) and err.count("\n") == 1, err
    if guard == "exact":
        assert "(first non-finite gradient: layer " in err
    assert not runs_dir.exists()  # not even an empty runs/ of a first, failed run


@pytest.mark.skipif(BACKEND == "tensorflow", reason="Keras never dispatches ahead on TensorFlow")
def test_the_app_callbacks_let_keras_dispatch_ahead_in_one_process(run_cli, monkeypatch):
    """No batch-end hook makes Keras wait for every call's result, unless the NaN guard is
    asked to be exact, or several processes train together (`app.lockstep`)."""
    decisions = {}

    def record(callback_list, callbacks):
        configure(callback_list, callbacks)
        guards = [callback for callback in callbacks or [] if isinstance(callback, NaNGuard)]
        if guards:
            decisions[case] = (callback_list._async_train, callback_list._async_test,
                               guards[0].asynchronous)

    configure = keras.callbacks.CallbackList._configure_async_dispatch
    monkeypatch.setattr(keras.callbacks.CallbackList, "_configure_async_dispatch", record)
    for case, guard, processes in [("alone", "true", 1), ("exact", "exact", 1),
                                   ("one of two processes", "true", 2)]:
        monkeypatch.setattr(app.lockstep, "process_part", lambda count=processes: (0, count))
        fit(run_cli, "training.epochs=1", f"training.nan_guard={guard}")
    # (train ahead, validate ahead, the guard asynchronous)
    assert decisions == {"alone": (True, True, True), "exact": (False, True, False),
                         "one of two processes": (False, False, False)}


# Each backend's file is loaded by the next backend in this cycle: every backend saves one and
# loads one in the three runs of the suite, with a subprocess each (the other two would double
# the cost: importing a backend takes seconds).
NEXT_BACKEND = {"tensorflow": "jax", "jax": "torch", "torch": "tensorflow"}


@pytest.mark.slow
def test_best_keras_predicts_the_same_on_the_next_backend(run_cli, runs_dir, tmp_path):
    fit(run_cli, "training.epochs=2", "model.architecture=cnn", "model.size=student")
    run = only_run(runs_dir)
    config = load_config(run / "config.yaml")
    x_test = load_dataset(config.data, seed=config.seed).x_test[:64]
    np.save(tmp_path / "x.npy", x_test)
    expected = keras.saving.load_model(run / "best.keras").predict(x_test, verbose=0)
    script = (
        "import sys, numpy as np, keras\n"
        "model = keras.saving.load_model(sys.argv[1])\n"
        "np.save(sys.argv[3], model.predict(np.load(sys.argv[2]), verbose=0))\n"
    )
    output = tmp_path / "predictions.npy"
    result = run_subprocess(["-c", script, str(run / "best.keras"), str(tmp_path / "x.npy"),
                             str(output)], backend=NEXT_BACKEND[BACKEND])
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_allclose(np.load(output), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_early_stopping_keys_reach_the_callback(run_cli, runs_dir):
    # Any finite val_loss is below 1e9: the stopping threshold ends training after epoch 1.
    fit(run_cli, "training.epochs=5", "early_stopping.stopping_threshold=1e9",
        "early_stopping.min_delta_mode=relative", "early_stopping.min_delta=0.01")
    metrics = json.loads((only_run(runs_dir) / "metrics.json").read_text())
    assert metrics["epochs_run"] == 1 and metrics["best"]["epoch"] == 1


@pytest.mark.slow
def test_radam_with_lookahead_trains_and_best_keras_loads(run_cli, runs_dir):
    fit(run_cli, "training.epochs=4", "optimizer.name=radam", "optimizer.lookahead=true",
        "schedule.lr=1e-2")
    run = only_run(runs_dir)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.5
    code, _, err = run_cli("evaluate", str(run))
    assert code == 0, err


@pytest.mark.slow
def test_noise_scale_lands_in_the_history(run_cli, runs_dir):
    fit(run_cli, "training.epochs=2", "training.noise_scale=true")
    scales = read_history_csv(only_run(runs_dir) / "history.csv")["noise_scale"]
    assert len(scales) == 2 and all(scale > 0 for scale in scales)


@pytest.mark.slow
def test_copies_across_splits_are_warned_about_and_recorded(run_cli, runs_dir):
    # scikit-learn's iris holds one pair of identical rows that the default split separates.
    code, out, err = run_cli(*fit_arguments("data.source=iris", "training.epochs=1"))
    assert code == 0, err
    assert "warning: scikit-learn iris: 1 validation and 0 test sample(s) are identical" in err
    metrics = json.loads((only_run(runs_dir) / "metrics.json").read_text())
    assert metrics["data_report"] == {"duplicates_across_splits": {
        "validation": 1, "test": 0, "policy": "warn"}}
