"""The command line: help, info, and one-line errors with exit code 2 for bad input."""

import os

import numpy as np
import pytest

from tests.helpers import (APP_TELLING_IF_TENSORFLOW_CAME, BACKEND, fit_arguments,
                           run_subprocess, write_npz)


def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


def lambda_model(path):
    import keras

    inputs = keras.Input((8, 8, 1))
    keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs)).save(path)
    return path


def cut_short(path):
    whole = lambda_model(path.with_name("whole.keras")).read_bytes()
    path.with_name("whole.keras").unlink()
    path.write_bytes(whole[:500])


def fake_run(folder, metrics="{}", model=b""):
    """A run directory with every file present, one of them damaged."""
    from app.config import dump_config, load_config

    folder.mkdir()
    write(folder / "config.yaml", dump_config(load_config()))
    write(folder / "metrics.json", metrics)
    write(folder / "classes.json", "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]")
    (folder / "best.keras").write_bytes(model)


TRANSFER = ["fit", "--set", "model.architecture=transfer", "--set"]


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
    "duplicated yaml key": (lambda t: write(t / "c.yaml", "training:\n  epochs: 3\n  epochs: 5\n"),
                            ["fit", "--config", "{tmp}/c.yaml"],
                            "gives 'epochs' twice (lines 2 and 3); keep one"),
    "yaml not utf-8": (lambda t: write(t / "c.yaml", "model:\n  size: caf\xe9\n", "latin-1"),
                       ["fit", "--config", "{tmp}/c.yaml"], "is not UTF-8 text (byte 18"),
    "csv not utf-8": (lambda t: write(t / "d.csv", "a,label\n1,caf\xe9\n", "latin-1"),
                      ["fit", "--set", "data.source={tmp}/d.csv"], "save it as UTF-8 CSV"),
    "blank csv label": (lambda t: write(t / "d.csv", "a,label\n1,x\n2,\n"),
                        ["fit", "--set", "data.source={tmp}/d.csv"],
                        "line 3 has no label (column 'label' is blank)"),
    "byte-order mark before a wrong label column": (
        lambda t: write(t / "d.csv", "labels,a\nx,1\n", "utf-8-sig"),
        ["fit", "--set", "data.source={tmp}/d.csv"], "(columns: labels, a)"),
    "empty keras file": (lambda t: write(t / "m.keras", ""),
                         [*TRANSFER, "model.backbone={tmp}/m.keras"],
                         "m.keras is not a whole .keras file (0 bytes"),
    "keras file cut short": (lambda t: cut_short(t / "m.keras"),
                             [*TRANSFER, "model.backbone={tmp}/m.keras"],
                             "m.keras is not a whole .keras file (500 bytes"),
    "lambda layer": (lambda t: lambda_model(t / "m.keras"),
                     [*TRANSFER, "model.backbone={tmp}/m.keras"],
                     "holds a Lambda layer, whose Python code could run arbitrary code when "
                     "loaded, so safe mode refuses it"),
    "damaged metrics.json": (lambda t: fake_run(t / "run", metrics="{"),
                             ["evaluate", "{tmp}/run"], "run/metrics.json is damaged"),
    "empty best.keras in a run": (lambda t: fake_run(t / "run"), ["evaluate", "{tmp}/run"],
                                  "run/best.keras is not a whole .keras file"),
    "epochs beyond int32 updates": (None, ["fit", "--set", "training.epochs=1000000000",
                                           "--set", "schedule.name=cosine"],
                                    "more than the 2,147,483,647 that Keras counts (int32)"),
    "one feature layer": (None, ["fit", "--set", "distillation.feature_layers=[a]"],
                          "distillation.feature_layers must be [teacher_layer, student_layer]"),
    "zero temperature": (None, ["fit", "--set", "distillation.temperature=0"],
                         "distillation.temperature must be > 0.0"),
    "augmentation of tabular data": (None, ["fit", "--set", "data.source=wine",
                                            "--set", "augmentation.flip=both"],
                                     "augmentation needs images"),
    "fine-tuning without a backbone": (None, ["fit", "--set", "training.fine_tune.epochs=2"],
                                       "training.fine_tune needs a pretrained body to freeze"),
    "missing backbone weights file": (None, ["fit", "--set", "model.architecture=mobilenet_v3_small",
                                             "--set", "model.backbone_weights={tmp}/none.h5"],
                                      "is neither imagenet, none nor an existing weights file"),
    "input size of an mlp": (None, ["fit", "--set", "model.input_size=[32]"],
                             "model.input_size does not apply to architecture 'mlp'"),
    "cutmix above one": (None, ["fit", "--set", "augmentation.cutmix=2"],
                         "augmentation.cutmix must be >= 0.0 and <= 1.0"),
    "unknown augmentation": (None, ["fit", "--set", "augmentation.sharpen=1"],
                             "unknown config key 'augmentation.sharpen'"),
    "negative mixup": (None, ["fit", "--set", "augmentation.mixup=-1"],
                       "augmentation.mixup must be >= 0.0"),
    "no training data left": (None, ["fit", "--set", "data.validation_fraction=0.6",
                                     "--set", "data.test_fraction=0.5"],
                              "must be < 1 to leave training data"),
    "unknown cache": (None, ["fit", "--set", "data.cache=ram"], "data.cache must be one of"),
    "distill from a non-run": (lambda t: (t / "notarun").mkdir(),
                               ["distill", "--teacher", "{tmp}/notarun"],
                               "is not a run directory of `fit`"),
    "too few images per class": (None, ["make-dataset", "shapes", "{tmp}/s", "--per-class", "1"],
                                 "--per-class: must be an integer >= 3"),
    "unknown generated task": (None, ["make-dataset", "circles", "{tmp}/s"],
                               "invalid choice: 'circles'"),
    "backbone on tabular data": (None, ["fit", "--set", "model.architecture=resnet50",
                                        "--set", "data.source=wine"],
                                 "model.architecture resnet50 needs images"),
    "transfer without a body": (None, ["fit", "--set", "model.architecture=transfer"],
                                "architecture 'transfer' needs model.backbone"),
    "negative seed": (None, ["fit", "--set", "seed=-1"], "seed must be >= 0"),
    "zero batch size": (None, ["fit", "--set", "training.batch_size=0"],
                        "training.batch_size must be >= 1"),
    "image size of zero": (None, ["fit", "--set", "data.image_size=[0,3]"],
                           "data.image_size must be [height, width]"),
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
    if BACKEND == "jax":  # the suite's own folder (conftest.py)
        assert lines["compiled"].startswith(os.environ["JAX_COMPILATION_CACHE_DIR"] + " (")
    else:
        assert "compiled" not in lines


@pytest.mark.slow
@pytest.mark.skipif(BACKEND == "tensorflow", reason="TensorFlow is the backend there")
def test_a_fit_on_jax_or_torch_never_imports_tensorflow(tmp_path):
    result = run_subprocess(["-c", APP_TELLING_IF_TENSORFLOW_CAME,
                             *fit_arguments("training.epochs=1", f"output.dir={tmp_path}")])
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("tensorflow imported: False")


def test_keras_takes_tensorflow_as_missing_on_jax_and_torch_only(monkeypatch):
    from keras.src.utils import module_utils

    from app.backend import keep_tensorflow_out_of_keras

    not_yet_imported = module_utils.LazyModule("tensorflow")
    monkeypatch.setattr(module_utils, "tensorflow", not_yet_imported)
    keep_tensorflow_out_of_keras()
    assert not_yet_imported.available is (BACKEND == "tensorflow")
    imported = module_utils.LazyModule("tensorflow")
    imported.initialize()  # as when Keras has imported it before
    monkeypatch.setattr(module_utils, "tensorflow", imported)
    keep_tensorflow_out_of_keras()
    assert imported.available


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "jax", reason="the compilation cache is JAX's")
def test_the_next_jax_run_reads_every_program_from_the_cache(tmp_path, monkeypatch):
    import keras

    for variable in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):
        monkeypatch.delenv(variable, raising=False)  # the suite's own cache (conftest.py)
    cache = tmp_path / "home-cache" / "efficient-learning" / "jax"

    def fit_in_a_new_process(name):
        result = run_subprocess(["-m", "app", *fit_arguments(
            "training.epochs=2", f"output.dir={tmp_path}", f"output.name={name}",
            "output.timestamp=false")], env={"XDG_CACHE_HOME": str(tmp_path / "home-cache")})
        assert result.returncode == 0, result.stderr[-2000:]
        # A program read from the cache has its last use written beside it.
        return {path.name: path.read_bytes() for path in cache.glob("*-atime")}

    first = fit_in_a_new_process("first")
    assert len(first) >= 10  # the initializers, the steps, the evaluation, the prediction
    second = fit_in_a_new_process("second")
    assert second.keys() == first.keys()  # nothing compiled anew
    assert all(second[key] != first[key] for key in first)  # every program read again
    weights = [keras.saving.load_model(tmp_path / run / "best.keras").get_weights()
               for run in ("first", "second")]
    assert all(np.array_equal(a, b) for a, b in zip(*weights))


def test_the_compilation_cache_is_jaxs_and_yields_to_jaxs_own_setting(monkeypatch, tmp_path):
    import app.backend
    from app.backend import COMPILATION_CACHE_BYTES, use_compilation_cache

    for variable in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                     "JAX_COMPILATION_CACHE_MAX_SIZE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    for backend in ("tensorflow", "torch"):
        use_compilation_cache(backend)
        assert "JAX_COMPILATION_CACHE_DIR" not in os.environ
    with monkeypatch.context() as without_filelock:  # JAX could not bound the folder's size
        without_filelock.setattr(app.backend, "is_installed", lambda name: name != "filelock")
        use_compilation_cache("jax")
        assert "JAX_COMPILATION_CACHE_DIR" not in os.environ
    use_compilation_cache("jax")
    assert os.environ["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "efficient-learning" / "jax")
    assert os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] == str(COMPILATION_CACHE_BYTES)
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/elsewhere")
    monkeypatch.delenv("JAX_COMPILATION_CACHE_MAX_SIZE")
    use_compilation_cache("jax")
    assert os.environ["JAX_COMPILATION_CACHE_DIR"] == "/elsewhere"
    assert "JAX_COMPILATION_CACHE_MAX_SIZE" not in os.environ  # JAX's defaults there


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


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, run_cli, monkeypatch):
    import errno

    import app.rundir

    def full(folder, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "classes.json"))

    monkeypatch.setattr(app.rundir, "write_run_start", full)
    code, out, err = run_cli("fit", "--set", "training.epochs=1")
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith("error: no space left on device writing ") and "classes.json" in err
    assert "free some space (or set output.dir to another disk)" in err
    assert list(tmp_path.iterdir()) == []
