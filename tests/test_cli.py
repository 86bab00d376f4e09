"""The command line: help, info, and one-line errors with exit code 2 for bad input."""

import numpy as np
import pytest

from tests.helpers import BACKEND, run_subprocess, write_npz


def write(path, text):
    path.write_text(text)
    return path


# Each case: files to make under tmp_path, then the arguments (with {tmp} for tmp_path).
BAD_INPUTS = {
    "malformed yaml": (lambda t: write(t / "c.yaml", "training: [1\n"),
                       ["fit", "--config", "{tmp}/c.yaml"], "not valid YAML at line"),
    "missing config": (None, ["fit", "--config", "{tmp}/none.yaml"], "does not exist"),
    "unknown key": (None, ["fit", "--set", "training.epoch=3"], "unknown config key 'training.epoch'"),
    "wrong type": (None, ["fit", "--set", "training.batch_size=big"], "must be an integer"),
    "negative epochs": (None, ["fit", "--set", "training.epochs=-5"], "training.epochs must be >= 1"),
    "unknown optimizer": (None, ["fit", "--set", "optimizer.name=lbfgs"], "optimizer.name must be one of"),
    "unknown backend": (None, ["--backend", "mxnet", "fit"], "unknown backend 'mxnet'"),
    "unknown backend after command": (None, ["fit", "--backend", "theano"], "unknown backend 'theano'"),
    "missing data file": (None, ["fit", "--set", "data.source={tmp}/missing.npz"], "does not exist"),
    "wrong label column": (lambda t: write(t / "d.csv", "a,b\n1,2\n"),
                           ["fit", "--set", "data.source={tmp}/d.csv"], "data.label_column 'label'"),
    "empty dataset": (lambda t: write_npz(t / "e.npz", x=np.zeros((0, 2)), y=np.zeros(0)),
                      ["fit", "--set", "data.source={tmp}/e.npz"], "holds no samples"),
    "nan features": (lambda t: write_npz(t / "n.npz", x=np.full((90, 2), np.nan)),
                     ["fit", "--set", "data.source={tmp}/n.npz"], "NaN or infinite features"),
    "labels do not match the model": (
        None, ["fit", "--set", "model.num_classes=3"], "model.num_classes is 3 but scikit-learn digits has 10"),
    "cnn on tabular data": (None, ["fit", "--set", "data.source=iris", "--set", "model.architecture=cnn"],
                            "needs images"),
    "existing run directory": (lambda t: (t / "runs" / "taken").mkdir(parents=True),
                               ["fit", "--set", "output.name=taken", "--set", "output.timestamp=false"],
                               "already exists"),
    "unknown command": (None, ["train"], "invalid choice: 'train'"),
    "lr-find range upside down": (None, ["lr-find", "--min-lr", "1", "--max-lr", "0.1"],
                                  "--min-lr must be below --max-lr"),
    "lr-find too few steps": (None, ["lr-find", "--steps", "3"], "must be an integer >= 5"),
    "lr-find negative rate": (None, ["lr-find", "--min-lr", "-1"], "must be > 0"),
    "lr-find unknown rule": (None, ["lr-find", "--rule", "median"], "invalid choice: 'median'"),
    "lr-find bad config": (None, ["lr-find", "--set", "schedule.lr=fast"], "schedule.lr must be"),
    "renamed key": (None, ["fit", "--set", "schedule.warmup_epochs=2"],
                    "'schedule.warmup_epochs' is now 'schedule.warmup'"),
    "unknown option": (None, ["fit", "--epochs", "3"], "unrecognized arguments: --epochs 3"),
    "evaluate a non-run": (lambda t: (t / "notarun").mkdir(),
                           ["evaluate", "{tmp}/notarun"], "is not a run directory of `fit`"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, run_cli):
    make, arguments, message = BAD_INPUTS[case]
    if make:
        make(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    code, out, err = run_cli(*[a.replace("{tmp}", str(tmp_path)) for a in arguments])
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert "Traceback" not in out + err
    assert sorted(tmp_path.rglob("*")) == before  # no run directory, not even a staging one


@pytest.mark.parametrize(("arguments", "hint"), [
    (["train"], "(see: python -m app --help)"),
    (["evaluate"], "(see: python -m app evaluate --help)"),
])
def test_argument_errors_point_to_the_right_help(run_cli, arguments, hint):
    code, _, err = run_cli(*arguments)
    assert code == 2 and err.rstrip().endswith(hint), err


def test_a_run_with_the_other_backend_of_a_running_keras_is_refused(run_cli):
    other = "torch" if BACKEND != "torch" else "jax"
    code, _, err = run_cli("info", "--backend", other)
    assert code == 2 and f"Keras is already running on '{BACKEND}'" in err


def test_info_names_versions_backend_and_devices(run_cli):
    import keras

    code, out, _ = run_cli("info")
    assert code == 0
    lines = dict(line.split(None, 1) for line in out.strip().splitlines())
    assert lines["keras"] == keras.__version__
    assert lines["backend"] == BACKEND
    assert all(name in lines["installed"] for name in ("tensorflow", "jax", "torch"))
    assert "cpu" in lines["devices"].lower()


def test_real_process_exit_codes_and_help(tmp_path):
    help_run = run_subprocess(["-m", "app", "--help"])
    assert help_run.returncode == 0
    for command in ("fit", "evaluate", "info", "--backend"):
        assert command in help_run.stdout
    fit_help = run_subprocess(["-m", "app", "fit", "--help"])
    assert "--config" in fit_help.stdout and "--set" in fit_help.stdout

    bad = run_subprocess(["-m", "app", "fit", "--set", "training.epochs=-1",
                          "--set", f"output.dir={tmp_path}/runs"])
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == ["error: training.epochs must be >= 1; got -1"]
    assert not (tmp_path / "runs").exists()
