"""Interrupted `fit` runs are kept and resume exactly (`app.resuming`, `fit --resume`).

The reference is the same configuration and seed trained without interruption, on the
same backend: a resumed run must end with the same `history.csv`, best epoch and test
metrics, bit for bit.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import app.engine
import app.resuming
import app.rundir
from app.errors import UserError
from app.resuming import check_resumable, load_training_state
from tests.helpers import BACKEND, REPO, fit, fit_arguments, interrupt_at, run_subprocess

# One batch per execution: `interrupt_at` signals at the end of one exact batch.
SETTINGS = ("training.epochs=4", "output.timestamp=false", "training.steps_per_execution=1")


def assert_same_run(reference, resumed):
    assert (reference / "history.csv").read_text() == (resumed / "history.csv").read_text()
    first, second = (json.loads((run / "metrics.json").read_text()) for run in (reference, resumed))
    assert first["best"] == second["best"] and first["test"] == second["test"]
    assert first["epochs_run"] == second["epochs_run"]
    assert sorted(path.name for path in resumed.iterdir()) == sorted(
        path.name for path in reference.iterdir())  # the training state is gone


@pytest.fixture
def reference(run_cli, runs_dir):
    fit(run_cli, *SETTINGS, "output.name=reference")
    return runs_dir / "reference"


@pytest.mark.parametrize("epoch, batch, position", [
    (1, 4, (1, 5)),
    pytest.param(1, 19, (2, 0), marks=pytest.mark.slow),  # the last of 20 batches
    # As the epoch begins: the state saved at the epoch's end is saved again before the first
    # batch, after the epoch's data loader drew from PyTorch's random state (as a timed save).
    (2, None, (2, 0)),
], ids=["mid-epoch", "epoch-end", "epoch-start"])
def test_ctrl_c_keeps_the_run_and_resume_ends_it_exactly(run_cli, runs_dir, reference,
                                                         monkeypatch, epoch, batch, position):
    interrupt_at(monkeypatch, epoch, batch)
    code, out, err = run_cli(*fit_arguments(*SETTINGS, "output.name=run"))
    partial = runs_dir / "run.partial"
    assert code == 130 and "Interrupted (SIGINT): saving the state after this batch" in out
    assert err == (f"interrupted; the run is kept in {partial}; resume it with: python -m app "
                   f"fit --resume {partial} --backend {BACKEND}\n")
    state = load_training_state(partial / "training_state.npz")
    assert (state.epoch, state.batch) == position
    monkeypatch.undo()
    code, _, err = run_cli("fit", "--resume", str(partial))
    assert code == 0, err
    assert not partial.exists()
    assert_same_run(reference, runs_dir / "run")


@pytest.mark.slow
@pytest.mark.skipif(BACKEND == "torch", reason="Keras runs one step per call on torch")
@pytest.mark.parametrize("steps, batch, position", [(4, 7, (1, 8)), (8, 23, (2, 0))],
                         ids=["second-of-five-calls", "last-call-numbered-past-the-end"])
def test_several_steps_per_execution_stop_at_an_execution_end_and_resume_exactly(
        run_cli, runs_dir, monkeypatch, steps, batch, position):
    settings = (*SETTINGS[:-1], f"training.steps_per_execution={steps}")
    fit(run_cli, *settings, "output.name=reference")
    # 20 batches per epoch: Keras numbers the end of the third call of eight batches 23.
    interrupt_at(monkeypatch, 1, batch)
    code, out, _ = run_cli(*fit_arguments(*settings, "output.name=run"))
    partial = runs_dir / "run.partial"
    assert code == 130
    state = load_training_state(partial / "training_state.npz")
    assert (state.epoch, state.batch) == position
    monkeypatch.undo()
    code, _, err = run_cli("fit", "--resume", str(partial))
    assert code == 0, err
    # The interrupted epoch's running loss adds its saved part in another order: the same
    # run, up to float rounding in that epoch's mean (JAX: 2e-7).
    reference, resumed = (np.genfromtxt(runs_dir / name / "history.csv", delimiter=",",
                                        names=True) for name in ("reference", "run"))
    for column in reference.dtype.names:
        np.testing.assert_allclose(resumed[column], reference[column], rtol=1e-5)


@pytest.mark.slow
def test_sigterm_keeps_the_run_exits_143_and_a_second_ctrl_c_stops_at_once(
        run_cli, runs_dir, reference, monkeypatch):
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as a launched process has it
    try:
        interrupt_at(monkeypatch, 1, 4, signal.SIGTERM)
        code, out, err = run_cli(*fit_arguments(*SETTINGS, "output.name=run"))
    finally:
        signal.signal(signal.SIGTERM, previous)
    partial = runs_dir / "run.partial"
    assert code == 143 and err.startswith(f"terminated (SIGTERM); the run is kept in {partial}")
    assert "Interrupted (SIGTERM)" in out
    # Resumed and interrupted twice at once: the second Ctrl-C does not wait for the batch's
    # end, and the last checkpoint (the end of epoch 2) stays.
    monkeypatch.undo()
    interrupt_at(monkeypatch, 2, 2, times=2)
    code, _, err = run_cli("fit", "--resume", str(partial))
    assert code == 130 and "resume it with" in err
    assert load_training_state(partial / "training_state.npz").epoch == 2
    monkeypatch.undo()
    assert run_cli("fit", "--resume", str(partial))[0] == 0
    assert_same_run(reference, runs_dir / "run")


@pytest.mark.slow
def test_a_crash_after_training_keeps_the_run_and_resume_only_writes_it(run_cli, runs_dir,
                                                                        reference, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(app.rundir, "write_reports", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        run_cli(*fit_arguments(*SETTINGS, "output.name=run"))
    partial = runs_dir / "run.partial"
    state = load_training_state(partial / "training_state.npz")
    assert state.epoch == 4 and len(state.history["loss"]) == 4
    monkeypatch.undo()
    code, out, err = run_cli("fit", "--resume", str(partial))
    assert code == 0, err
    assert "Epoch" not in out  # nothing trained again
    assert_same_run(reference, runs_dir / "run")


def test_a_state_written_in_the_background_fails_the_fit_if_it_cannot_be_written(
        tmp_path, monkeypatch):
    import keras

    from app.resuming import TrainingCheckpoint

    def full_disk(path, state):
        raise OSError(28, "No space left on device")

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x, y = np.ones((8, 2)), np.zeros((8, 1))
    checkpoint = TrainingCheckpoint(tmp_path / "training_state.npz")
    model.fit(x, y, epochs=2, verbose=0, callbacks=[checkpoint])
    written = load_training_state(tmp_path / "training_state.npz")
    assert (written.epoch, written.history["loss"]) == (2, model.history.history["loss"])
    monkeypatch.setattr(app.resuming, "save_training_state", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[checkpoint])


@pytest.mark.parametrize("time_budget", [None, 0.02])
def test_epoch_end_saves_keep_within_the_time_budget(tmp_path, monkeypatch, time_budget):
    """A write made slow (50 ms) against epochs of milliseconds: within a 2 % budget the
    next save is due 2.5 s later, so only the first epoch, the one after which training
    stops and the last save; without a budget, every epoch does."""
    import keras

    from app.resuming import TrainingCheckpoint

    saved = []

    def slow_write(path, state):
        write(path, state)
        saved.append((state.epoch, state.stopped))
        time.sleep(0.05)

    class StopAfterTheEighth(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = epoch == 7

    write = app.resuming.save_training_state
    monkeypatch.setattr(app.resuming, "save_training_state", slow_write)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x, y = np.ones((8, 2)), np.zeros((8, 1))
    for stopper, last in ((StopAfterTheEighth(), (8, True)),
                          (keras.callbacks.Callback(), (20, False))):
        saved.clear()
        checkpoint = TrainingCheckpoint(tmp_path / "training_state.npz", time_budget=time_budget)
        model.fit(x, y, epochs=20, verbose=0, callbacks=[stopper, checkpoint])
        assert saved == ([(epoch, False) for epoch in range(1, last[0])] + [last]
                         if time_budget is None else [(1, False), last])
        assert load_training_state(tmp_path / "training_state.npz").epoch == last[0]


@pytest.mark.slow
def test_resume_refuses_what_it_cannot_continue(run_cli, runs_dir, reference, monkeypatch):
    def refused(*arguments):
        code, _, err = run_cli(*arguments)
        assert code == 2 and err.count("\n") == 1, err
        return err

    assert "is a finished run, not an interrupted one" in refused(
        "fit", "--resume", str(reference))
    assert "is not a directory" in refused("fit", "--resume", str(runs_dir / "nothing.partial"))
    assert "drop --config and --set" in refused(
        "fit", "--resume", str(reference), "--set", "seed=2")
    interrupt_at(monkeypatch, 0, 3)
    run_cli(*fit_arguments(*SETTINGS, "output.name=run"))
    monkeypatch.undo()
    partial = runs_dir / "run.partial"
    state = load_training_state(partial / "training_state.npz")
    other = next(name for name in ("tensorflow", "jax", "torch") if name != BACKEND)
    with pytest.raises(UserError, match=f"the run was trained on {BACKEND}; resume it with "
                                        f"--backend {BACKEND}"):
        check_resumable(state, {**state.identity, "backend": other})
    config = partial / "config.yaml"
    config.write_text(config.read_text().replace("seed: 42", "seed: 1"))
    assert "config.yaml changed since it started" in refused("fit", "--resume", str(partial))
    (partial / "training_state.npz").write_bytes(b"cut short")
    assert "training_state.npz is damaged" in refused("fit", "--resume", str(partial))
    assert partial.is_dir()  # a refused resume never deletes the user's run


def last_written(path):
    """The file's modification time in nanoseconds, or None while it does not exist."""
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_ends_exactly(run_cli, runs_dir, tmp_path):
    """Killed three times (no handler runs: a power cut, the out-of-memory killer), at random
    moments within and between epochs, the run resumes each time and ends as if never
    stopped."""
    settings = (*SETTINGS, "training.checkpoint_minutes=0.002")
    fit(run_cli, *settings, "output.name=reference")  # here; each killed run is a process
    command = [sys.executable, "-m", "app", *fit_arguments(*settings, "output.name=run"),
               "--set", f"output.dir={runs_dir}"]
    partial = runs_dir / "run.partial"
    chooser = random.Random(0)
    kills = 0
    environment = {**os.environ, "KERAS_BACKEND": BACKEND, "PYTHONPATH": str(REPO)}
    state_file = partial / "training_state.npz"
    for _ in range(3):
        checkpoint = last_written(state_file)
        process = subprocess.Popen(command, cwd=tmp_path, env=environment,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Training takes about a second here, so the kill is timed from the process's first
        # new checkpoint, not from its start (Keras's import time varies from machine to machine).
        while last_written(state_file) == checkpoint and process.poll() is None:
            time.sleep(0.01)
        time.sleep(chooser.uniform(0, 0.2))
        if process.poll() is None:
            process.kill()
            kills += 1
        process.wait()
        command = [sys.executable, "-m", "app", "fit", "--resume", str(partial)]
        if not partial.exists():
            break
    assert kills >= 2
    if partial.exists():
        finished = run_subprocess(command[1:], cwd=tmp_path)
        assert finished.returncode == 0, finished.stderr
    assert_same_run(runs_dir / "reference", runs_dir / "run")
    assert sorted(path.name for path in runs_dir.iterdir()) == ["reference", "run"]


@pytest.mark.slow
def test_a_run_interrupted_in_fine_tunings_second_phase_resumes_exactly(run_cli, runs_dir,
                                                                         monkeypatch):
    """Phase two has its own optimizer and unfrozen blocks: the resumed run rebuilds them
    before restoring the state."""
    fit(run_cli, "model.architecture=cnn", "training.epochs=1", "output.name=source",
        "output.timestamp=false")
    transfer = ("model.architecture=transfer", "model.width=null",
                f"model.backbone={runs_dir / 'source'}", "training.epochs=2",
                "training.fine_tune.epochs=2", "output.timestamp=false",
                "training.steps_per_execution=1")  # `interrupt_at` needs every batch's end
    fit(run_cli, *transfer, "output.name=reference")
    interrupt_at(monkeypatch, 2, 4)  # the first epoch of phase two
    code, _, err = run_cli(*fit_arguments(*transfer, "output.name=run"))
    assert code == 130, err
    partial = runs_dir / "run.partial"
    state = load_training_state(partial / "training_state.npz")
    assert (state.phase, state.phase_start, state.epoch, state.batch) == (2, 2, 2, 5)
    monkeypatch.undo()
    assert run_cli("fit", "--resume", str(partial))[0] == 0
    assert_same_run(runs_dir / "reference", runs_dir / "run")
