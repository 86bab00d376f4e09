"""`python -m app tune` end to end on the backend under test: the three tuners, the search
directory, failed trials, resuming, worker processes and KerasTuner's distributed mode."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml

import app.engine

from app.config import load_config
from app.data import load_dataset
from app.hypermodel import ConfiguredHyperModel, without_test_split
from tests.helpers import BACKEND, REPO, run_subprocess

SEARCH_FILES = {"config.yaml", "best_config.yaml", "leaderboard.csv", "best.keras",
                "metrics.json", "history.csv", "curves.png", "classes.json", "tuner"}
# Small trials: a student MLP for three epochs on digits.
SEARCH = [
    "model.size=student", "training.epochs=3", "training.verbose=0",
    "search={schedule.lr: {log_uniform: [1e-3, 3e-2]}, model.width: {choice: [16, 32]}, "
    "model.dropout: {uniform: [0.0, 0.3]}}",
    "tuning.max_trials=3",
]
# Trials in the test's own process. TensorFlow's default starts a worker process per ten
# trials, whose import of TensorFlow, Keras and KerasTuner took half of a small search's time;
# the tests of worker processes, Ctrl-C and failing searches keep the default.
IN_THIS_PROCESS = "tuning.trials_per_process=0"


def tune_arguments(*overrides):
    arguments = ["tune"]
    for override in [*SEARCH, *overrides]:
        arguments += ["--set", override]
    return arguments


def only_search(runs_dir):
    searches = list(runs_dir.iterdir())
    assert len(searches) == 1, searches
    return searches[0]


def read_leaderboard(search_dir):
    with open(search_dir / "leaderboard.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
@pytest.mark.parametrize("tuner, objective", [
    ("random", "val_loss"), ("bayesian", "val_accuracy"), ("hyperband", "val_loss")])
def test_a_search_writes_a_ranked_leaderboard_and_a_tested_best_model(run_cli, runs_dir, tuner,
                                                                     objective):
    code, out, err = run_cli(*tune_arguments(f"tuning.objective={objective}", IN_THIS_PROCESS),
                             "--tuner", tuner)
    assert code == 0, err
    search_dir = only_search(runs_dir)
    assert search_dir.name.startswith("mlp-student-search-")
    assert {path.name for path in search_dir.iterdir()} == SEARCH_FILES
    rows = read_leaderboard(search_dir)
    assert len(rows) == (3 if tuner != "hyperband" else len(rows)) and len(rows) >= 3
    assert all(row["status"] == "completed" for row in rows)
    objectives = [float(row[objective]) for row in rows]
    assert objectives == sorted(objectives, reverse=objective == "val_accuracy")  # best first
    assert [row["rank"] for row in rows] == [str(rank) for rank in range(1, len(rows) + 1)]
    assert out.count("\ntrial ") + out.startswith("trial ") == len(rows)  # a line per trial

    metrics = json.loads((search_dir / "metrics.json").read_text())
    search = metrics["search"]
    assert search["tuner"] == tuner and search["completed"] == len(rows)
    assert search["best_objective"] == pytest.approx(objectives[0])
    assert str(search["best_trial"]) == rows[0]["trial"]
    # best_config.yaml is an ordinary fit configuration with the winning values.
    best_config = load_config(search_dir / "best_config.yaml")
    assert best_config.search == {}
    assert best_config.model.width == int(rows[0]["model.width"])
    assert best_config.schedule.lr == pytest.approx(float(rows[0]["schedule.lr"]))
    # Retraining the best trial's configuration reproduces its validation loss (Hyperband's
    # best trial trained for fewer epochs; the best val_accuracy epoch need not be the one
    # early stopping keeps).
    if tuner == "random":
        assert metrics["best"]["val_loss"] == pytest.approx(objectives[0], rel=2e-2)
    assert 0.5 < metrics["test"]["accuracy"] <= 1.0


def test_the_search_never_sees_the_test_split():
    config = load_config(overrides=SEARCH)
    dataset = load_dataset(config.data, seed=config.seed)
    with pytest.raises(ValueError, match="without its test split"):
        ConfiguredHyperModel(config, dataset)
    hypermodel = ConfiguredHyperModel(config, without_test_split(dataset))
    assert hypermodel.dataset.x_test is None and hypermodel.dataset.y_test is None


@pytest.mark.slow
def test_failed_trials_are_listed_with_their_reason(run_cli, runs_dir):
    code, out, err = run_cli(*tune_arguments(
        "search={schedule.name: {choice: [constant, step]}, schedule.lr: {choice: [0.01]}}",
        "tuning.max_trials=2", "tuning.max_consecutive_failed_trials=2", IN_THIS_PROCESS))
    assert code == 0, err
    rows = read_leaderboard(only_search(runs_dir))
    statuses = {row["schedule.name"]: (row["status"], row["message"]) for row in rows}
    assert statuses["constant"] == ("completed", "")
    assert statuses["step"][0] == "failed"
    assert "invalid combination: schedule 'step' needs schedule.step_size" in statuses["step"][1]
    assert "failed: " in out


@pytest.mark.slow
def test_a_search_where_every_trial_fails_is_one_line_and_leaves_nothing(run_cli, runs_dir):
    code, out, err = run_cli(*tune_arguments(
        "search={schedule.lr: {choice: [1.0e+6, 1.0e+7]}}", "optimizer.name=sgd",
        "tuning.max_trials=2", "tuning.max_consecutive_failed_trials=2"))
    assert code == 2
    assert err.startswith("error: the search stopped after 2 failed trials in a row; the last: ")
    assert "diverged" in err and err.count("\n") == 1
    assert not runs_dir.exists() or list(runs_dir.iterdir()) == []


def test_without_a_search_section_tune_searches_the_default_space(tmp_path):
    from app.config.search_space import parse_search_space
    from app.tuning import Role, _plan_search, default_search

    config = load_config(overrides=["search={}", f"output.dir={tmp_path}"])
    assert default_search(config) == {"schedule.lr": {"log_uniform": [1.0e-4, 1.0e-1]},
                                      "model.width": {"choice": [32, 64, 128, 256]},
                                      "model.dropout": {"uniform": [0.0, 0.5]}}
    # A backbone has no width to search.
    backbone = load_config(overrides=["model.architecture=mobilenet_v3_small"])
    assert list(default_search(backbone)) == ["schedule.lr", "model.dropout"]
    planned, _ = _plan_search(config, Role())
    assert planned.search == default_search(config)
    assert [d.key for d in parse_search_space(planned.search)] == list(planned.search)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("overrides, message", [
    (["schedule.lr=auto"], "schedule.lr: auto runs the LR finder, which tune does not"),
])
def test_a_search_that_cannot_start_is_a_one_line_error(run_cli, runs_dir, overrides, message):
    code, _, err = run_cli(*tune_arguments(*overrides))
    assert code == 2 and message in err and err.count("\n") == 1
    assert not runs_dir.exists()


def test_tune_without_keras_tuner_says_what_to_install(run_cli, runs_dir, monkeypatch):
    import app.backend

    installed = app.backend.is_installed
    monkeypatch.setattr(app.backend, "is_installed",
                        lambda name: name != "keras_tuner" and installed(name))
    code, _, err = run_cli(*tune_arguments())
    assert code == 2
    assert err == "error: tune needs keras_tuner; pip install 'efficient-learning[tuner]'\n"
    assert not runs_dir.exists()


@pytest.mark.parametrize("arguments, message", [
    (["--resume", "x", "--set", "training.epochs=2"], "--resume continues a search with its own"),
    (["--resume", "nowhere"], "nowhere is not an unfinished search"),
    (["--worker-id", "w1"], "--worker-id names a --worker"),
    (["--chief", "localhost"], "'localhost' must be HOST:PORT"),
    (["--chief", "a:1", "--worker", "a:1"], "not allowed with argument"),
])
def test_bad_tune_arguments_are_one_line_errors(run_cli, arguments, message):
    code, _, err = run_cli("tune", *arguments)
    assert code == 2 and message in err and err.count("\n") == 1


@pytest.mark.slow
def test_an_interrupted_search_resumes_where_it_stopped(run_cli, runs_dir, tmp_path):
    command = [sys.executable, "-m", "app", "tune", *tune_arguments("tuning.max_trials=4")[1:],
               "--set", f"output.dir={runs_dir}"]
    # Its own process group, which Ctrl-C in a terminal signals as a whole (on TensorFlow
    # the trials run in a worker process).
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=REPO, env=_environment(), start_new_session=True)
    for line in process.stdout:
        if line.startswith("trial 1/4"):
            os.killpg(process.pid, signal.SIGINT)
            break
    _, err = process.communicate(timeout=300)
    assert process.returncode == 130, err
    partial = only_search(runs_dir)
    assert partial.name.endswith(".partial")
    assert f"continue it with: python -m app tune --resume {partial}" in err

    code, out, err = run_cli("tune", "--resume", str(partial))
    assert code == 0, err
    search_dir = only_search(runs_dir)
    assert search_dir.name == partial.name[:-len(".partial")]
    rows = read_leaderboard(search_dir)
    assert sorted(int(row["trial"]) for row in rows) == [1, 2, 3, 4]
    assert "trial 1/4" not in out  # the finished trial was not run again


@pytest.mark.slow
def test_an_interrupted_trial_resumes_from_its_last_checkpoint(run_cli, runs_dir, monkeypatch):
    """Ctrl-C in the middle of the second trial, then `--resume`: the trial continues from
    its saved state (KerasTuner alone would run it again from its start), and every trial
    scores exactly as in an uninterrupted search."""
    # Trials in this process (no worker processes), so that the spy below sees them.
    # One step per call: a mid-epoch state then resumes bit for bit (several steps per call
    # sum that epoch's running loss in another order, see test_resume).
    settings = ["tuning.max_trials=2", "training.epochs=8", "output.timestamp=false",
                IN_THIS_PROCESS, "training.steps_per_execution=1"]
    code, _, err = run_cli(*tune_arguments(*settings, "output.name=reference"))
    assert code == 0, err
    # A state every 0.06 s, so that one exists early in the second trial. The reference needs
    # none: saves do not change training.
    command = [sys.executable, "-m", "app", "tune", *tune_arguments(*settings)[1:],
               "--set", "training.checkpoint_minutes=0.001",
               "--set", "output.name=run", "--set", f"output.dir={runs_dir}"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, cwd=REPO, env=_environment(), start_new_session=True)
    partial = runs_dir / "run-search.partial"
    state = partial / "tuner" / "trial_1" / "training_state-1.npz"
    while not state.exists() and process.poll() is None:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 130, err
    assert state.exists()  # the trial's state, kept to resume
    resumed_from = []
    training_checkpoint = app.engine.training_checkpoint

    def spy(config, dataset, path, resume):
        checkpoint = training_checkpoint(config, dataset, path, resume)
        if resume:
            resumed_from.append((checkpoint.resume_from.epoch, checkpoint.resume_from.batch))
        return checkpoint

    monkeypatch.setattr(app.engine, "training_checkpoint", spy)
    code, out, err = run_cli("tune", "--resume", str(partial))
    assert code == 0, err
    assert len(resumed_from) == 1 and resumed_from[0] != (0, 0), resumed_from
    assert not state.exists()
    reference, resumed = ([{key: value for key, value in row.items() if key != "seconds"}
                           for row in read_leaderboard(runs_dir / f"{name}-search")]
                          for name in ("reference", "run"))
    assert reference == resumed


@pytest.mark.slow
def test_trials_can_run_in_bounded_worker_processes(run_cli, runs_dir):
    code, out, err = run_cli(*tune_arguments("tuning.max_trials=2",
                                             "tuning.trials_per_process=1"))
    assert code == 0, err
    rows = read_leaderboard(only_search(runs_dir))
    assert [row["status"] for row in rows] == ["completed", "completed"]


@pytest.mark.slow
def test_a_chief_and_two_workers_search_together(tmp_path):
    port = _free_port()
    common = ["-m", "app", "tune", *tune_arguments("tuning.max_trials=4")[1:],
              "--set", f"output.dir={tmp_path / 'runs'}", "--set", "output.name=shared"]
    chief = _start(common + ["--chief", f"127.0.0.1:{port}"])
    workers = [_start(common + ["--worker", f"127.0.0.1:{port}", "--worker-id", name])
               for name in ("w1", "w2")]
    worker_outputs = [worker.communicate(timeout=400) for worker in workers]
    chief_out, chief_err = chief.communicate(timeout=400)
    assert chief.returncode == 0, chief_err
    for worker, (out, err) in zip(workers, worker_outputs):
        assert worker.returncode == 0, err
        assert "worker finished" in out
    trials_run = [out.count("val_loss ") for out, _ in worker_outputs]
    assert sum(trials_run) == 4 and min(trials_run) >= 1, trials_run  # both workers worked
    search_dir = tmp_path / "runs" / "shared-search"
    assert {path.name for path in search_dir.iterdir()} == SEARCH_FILES
    assert len(read_leaderboard(search_dir)) == 4
    assert "search            4/4 trials completed" in chief_out


@pytest.mark.slow
def test_a_worker_with_another_configuration_is_refused(tmp_path):
    partial = tmp_path / "runs" / "shared-search.partial"
    partial.mkdir(parents=True)
    (partial / "config.yaml").write_text(yaml.safe_dump({"seed": 1}))
    result = run_subprocess(["-m", "app", "tune", *tune_arguments()[1:],
                             "--set", f"output.dir={tmp_path / 'runs'}",
                             "--set", "output.name=shared", "--worker", "127.0.0.1:1"])
    assert result.returncode == 2
    assert "this worker's configuration differs from the chief's" in result.stderr


def _environment():
    return dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="2",
                PYTHONPATH=str(REPO))


def _start(arguments):
    return subprocess.Popen([sys.executable, *arguments], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env=_environment())


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
