"""`distribution.strategy`: checked against the backend, clear TPU failures, even sharding,
and weights after training on two devices equal to one device on the same global batch."""

import csv
import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest

from app.backend import give_virtual_devices_threads
from app.config import DistributionConfig, load_config
from app.data import load_dataset
from app.distribution import (Cluster, Devices, check_cluster, check_distribution,
                              model_parallel_layout, read_cluster, start_distribution)
from app.errors import UserError
from app.reporting import read_history_csv
from app.resuming import load_training_state
from tests.helpers import (APP_TELLING_IF_TENSORFLOW_CAME, BACKEND, REPO, fit_arguments,
                           interrupt_at, run_subprocess, subprocess_environment)


def virtual_devices(count):
    """The environment of a process with `count` virtual CPU devices, its XLA flags added to
    the suite's own (conftest.py) so that every run compiles the same way."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={count}"
    return {"XLA_FLAGS": flags.strip()}


TWO_DEVICES, FOUR_DEVICES = virtual_devices(2), virtual_devices(4)
# `python -m app` on two devices: JAX reads XLA_FLAGS; TensorFlow's CPU must be split into two
# logical devices before it starts, which no environment variable does.
APP_ON_TWO_DEVICES = {
    "jax": ["-m", "app"],
    "tensorflow": ["-c", "import sys, tensorflow as tf; "
                         "cpu = tf.config.list_physical_devices('CPU')[0]; "
                         "tf.config.set_logical_device_configuration("
                         "cpu, [tf.config.LogicalDeviceConfiguration()] * 2); "
                         "from app.cli import main; sys.exit(main(sys.argv[1:]))"],
}
# The strategy that runs on each backend (torch has none).
STRATEGY = {"tensorflow": "mirrored", "jax": "data-parallel"}


@pytest.mark.parametrize("strategy, backend, message", [
    ("data-parallel", "torch", "Keras 3 has no multi-device training on the torch backend"),
    ("mirrored", "torch", "use --backend jax --distribution data-parallel"),
    ("mirrored", "jax", "--distribution mirrored runs on the tensorflow backend, not jax; "
                        "use --backend tensorflow, or --distribution data-parallel on jax"),
    ("tpu", "jax", "--distribution tpu runs on the tensorflow backend"),
    ("data-parallel", "tensorflow", "--distribution data-parallel runs on the jax backend, "
                                    "not tensorflow; use --backend jax, or --distribution "
                                    "mirrored on tensorflow"),
    ("model-parallel", "tensorflow", "--distribution model-parallel runs on the jax backend"),
    ("model-parallel", "torch", "Keras 3 has no multi-device training on the torch backend"),
])
def test_a_strategy_of_another_backend_is_refused(strategy, backend, message):
    with pytest.raises(UserError) as error:
        check_distribution(DistributionConfig(strategy=strategy), backend)
    assert message in str(error.value)


def test_each_strategy_is_accepted_on_its_backend():
    for strategy, backend in [("none", "torch"), ("mirrored", "tensorflow"),
                              ("tpu", "tensorflow"), ("data-parallel", "jax")]:
        check_distribution(DistributionConfig(strategy=strategy), backend)
    with pytest.raises(UserError, match="distribution.tpu names a TPU"):
        check_distribution(DistributionConfig(strategy="mirrored", tpu="my-tpu"), "tensorflow")


def test_the_cli_checks_the_strategy_before_training(run_cli, runs_dir):
    other = {"tensorflow": "data-parallel", "jax": "mirrored", "torch": "data-parallel"}[BACKEND]
    code, _, err = run_cli("fit", "--distribution", other)
    assert code == 2 and err.count("\n") == 1
    assert not runs_dir.exists()


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TPUStrategy is TensorFlow's")
@pytest.mark.parametrize("name, detail", [
    (None, "no TPU on this machine (NotFoundError: TPUs not found in the cluster"),
    ("no-such-tpu-here", "no TPU named 'no-such-tpu-here'"),
])
def test_without_a_tpu_the_tpu_strategy_fails_with_one_line(name, detail):
    with pytest.raises(UserError) as error:
        start_distribution(DistributionConfig(strategy="tpu", tpu=name))
    message = str(error.value)
    assert message.startswith(f"--distribution tpu: {detail}") and "\n" not in message
    assert message.endswith("run on a Cloud TPU VM (see the README) or use --distribution none")


def test_splits_are_trimmed_to_divide_evenly_over_the_devices():
    config = load_config()
    dataset = load_dataset(config.data, seed=config.seed)
    assert Devices().shardable(dataset, 64) is dataset
    even = Devices("data-parallel", 4).shardable(dataset, 64)
    for split in ("train", "val"):
        full, kept = len(getattr(dataset, f"y_{split}")), len(getattr(even, f"y_{split}"))
        assert kept % 4 == 0 and full - 4 < kept <= full
        np.testing.assert_array_equal(getattr(even, f"x_{split}"),
                                      getattr(dataset, f"x_{split}")[:kept])
    assert len(even.y_test) == len(dataset.y_test)  # the test split is scored on one device
    with pytest.raises(UserError, match="batch_size 30 must be a multiple of the 4 devices"):
        Devices("mirrored", 4).shardable(dataset, 30)


def parity(strategy, *flags, devices=TWO_DEVICES):
    result = run_subprocess(["tests/distributed_parity.py", strategy, *flags], env=devices)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(BACKEND == "torch", reason="Keras has no multi-device training on torch")
def test_two_devices_train_to_the_weights_of_one_device():
    measured = parity(STRATEGY[BACKEND])
    assert measured["replicas"] == 2
    assert measured["max_abs_difference"] < 1e-5, measured


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "tensorflow",
                    reason="only TensorFlow computes batch statistics per replica")
def test_tensorflow_needs_synchronized_batch_norm_for_parity():
    assert parity("mirrored", "--unsynchronized")["max_abs_difference"] > 1e-3


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "tensorflow", reason="on JAX the one-process references of the "
                    "two-process tests below fit and tune on four devices")
@pytest.mark.parametrize("command", ["fit", "tune"])
def test_fit_and_tune_train_on_two_devices(tmp_path, command):
    arguments = [*APP_ON_TWO_DEVICES[BACKEND], command, "--distribution", STRATEGY[BACKEND],
                 "--set", f"output.dir={tmp_path}", "--set", "model.size=student",
                 "--set", "training.epochs=2", "--set", "training.verbose=0"]
    if command == "tune":
        # Trials in this process, which has the two devices.
        arguments += ["--set", "search={model.width: {choice: [16, 32]}}",
                      "--set", "tuning.max_trials=2", "--set", "tuning.trials_per_process=0"]
    result = run_subprocess(arguments, env=TWO_DEVICES)
    assert_ran_on_devices(result, tmp_path, STRATEGY[BACKEND], 2)


def assert_ran_on_devices(result, output, strategy, replicas):
    """`result` of `python -m app` says and records that it trained on `replicas` devices."""
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"devices           {replicas} ({strategy})" in result.stdout
    run_dir, = output.iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["distribution"] == {"strategy": strategy, "replicas": replicas}


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute strategies are TensorFlow's")
def test_tune_gives_the_strategy_to_keras_tuner_which_builds_trials_in_it(tmp_path):
    import keras_tuner
    import tensorflow as tf

    from app.hypermodel import ConfiguredHyperModel, build_tuner, without_test_split

    config = load_config(overrides=["search={model.width: {choice: [16, 32]}}", "schedule.lr=0.01"])
    dataset = load_dataset(config.data, seed=config.seed)
    devices = Devices("mirrored", 1, tf.distribute.MirroredStrategy(["/cpu:0"]))
    hypermodel = ConfiguredHyperModel(config, without_test_split(dataset), devices)
    tuner = build_tuner(config, hypermodel, tmp_path, devices)
    assert tuner.distribution_strategy is devices.tf_strategy
    model = tuner._try_build(keras_tuner.HyperParameters())
    assert model.distribute_strategy is devices.tf_strategy


# Model parallelism ---------------------------------------------------------------------------

SHAPES = {"dense_0/kernel": (64, 256), "dense_0_bn/gamma": (256,), "logits/kernel": (256, 10),
          "logits/bias": (10,), "conv_0/kernel": (3, 3, 1, 32)}


def test_the_built_in_layout_splits_kernels_that_divide_along_model():
    layout = model_parallel_layout({"batch": 1, "model": 4}, SHAPES)
    assert layout == {"dense_0/kernel": (None, "model"), "dense_0_bn/gamma": None,
                      "logits/kernel": None,  # 10 classes do not split over 4 devices
                      "logits/bias": None, "conv_0/kernel": (None, None, None, "model")}


@pytest.mark.parametrize("user_layout, message", [
    ({"dense_0/kern": [None, "model"]},
     "pattern 'dense_0/kern' matches no variable; a pattern matches a whole path such as "
     "'dense_0/kernel' (use '.*dense_0/kern' to match its end)"),
    ({"dense_0/kernel": ["model"]}, "needs a list of 2 axes (batch, model or null)"),
    ({"dense_0/kernel": [None, "rows"]}, "'rows' is not a mesh axis"),
    ({"logits/kernel": [None, "model"]}, "a dimension of 10 does not split over the 4 devices"),
    ({"dense.*kernel": [None, "model"], "dense_0/.*": None},
     "dense_0/kernel matches two patterns, 'dense.*kernel' and 'dense_0/.*'"),
])
def test_a_user_layout_that_does_not_fit_is_one_line(user_layout, message):
    with pytest.raises(UserError, match="^distribution.layout") as error:
        model_parallel_layout({"batch": 1, "model": 4}, SHAPES, user_layout)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_user_layouts_are_matched_on_whole_paths():
    layout = model_parallel_layout({"batch": 2, "model": 2}, SHAPES,
                                   {"(dense_0|logits)/kernel": [None, "model"], "conv.*": None})
    assert layout["dense_0/kernel"] == layout["logits/kernel"] == (None, "model")
    assert layout["conv_0/kernel"] is None and layout["logits/bias"] is None


@pytest.mark.parametrize("overrides, message", [
    (["distribution.mesh={batch: 2, model: 2}"], "distribution.mesh is model-parallel's"),
    (["distribution.strategy=model-parallel", "distribution.mesh={batch: 2, rows: 2}"],
     "distribution.mesh must be {batch: B, model: M}"),
    (["distribution.strategy=model-parallel", "distribution.mesh={batch: 0, model: 2}"],
     "distribution.mesh must be {batch: B, model: M}"),
])
def test_a_bad_mesh_is_refused_before_anything_starts(overrides, message):
    with pytest.raises(UserError, match=message):
        load_config(overrides=overrides)


def test_tune_refuses_model_parallel_in_one_line(run_cli, runs_dir):
    if BACKEND != "jax":
        pytest.skip("the strategy itself is refused first on other backends")
    code, _, err = run_cli("tune", "--distribution", "model-parallel")
    assert code == 2 and err.count("\n") == 1
    assert "use --distribution data-parallel" in err
    assert not runs_dir.exists()


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution.ModelParallel is JAX's")
@pytest.mark.parametrize("architecture, flags", [
    ("mlp", ["--set", "distribution.mesh={batch: 2, model: 2}"]),
    ("cnn", ["--set", 'distribution.layout={".*conv_1/kernel": [null, null, null, model], '
                      '".*dense/kernel": [model, null]}']),
], ids=["mesh-2x2-built-in-layout", "mesh-1x4-user-layout"])
def test_four_devices_model_parallel_train_to_the_weights_of_one_device(architecture, flags):
    measured = parity("model-parallel", "--set", f"model.architecture={architecture}", *flags,
                      devices=FOUR_DEVICES)
    assert measured["max_abs_difference"] < 1e-5, measured
    layout = measured["distribution"]["layout"]
    assert any(axes is not None for axes in layout.values())
    for path, axes in layout.items():  # where JAX holds each trained weight
        assert measured["placed"][path] == (axes or [None] * len(measured["placed"][path]))


def test_virtual_cpu_devices_get_threads_unless_the_user_set_them():
    def threads(backend="jax", **environment):
        environ = {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false", **environment}
        give_virtual_devices_threads(backend, environ)
        return environ.get("PJRT_NPROC")

    forced = " ".join(f"--xla_force_host_platform_device_count={count}" for count in (8, 2))
    assert threads(XLA_FLAGS=forced) == "8"  # XLA takes the flag's last value
    assert threads(JAX_NUM_CPU_DEVICES="3") == "12"
    assert threads(JAX_NUM_CPU_DEVICES="three") is None  # JAX's own error follows
    assert threads() is None  # one device: its collectives wait for no other task
    assert threads("tensorflow", XLA_FLAGS=forced) is None
    assert threads(XLA_FLAGS=forced, PJRT_NPROC="5") == "5"
    assert threads(XLA_FLAGS=forced, NPROC="5") is None  # XLA reads NPROC itself


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "jax", reason="the threads of XLA's CPU client, which JAX runs")
def test_the_threads_given_to_four_virtual_devices_reach_xla():
    """`python -m app` on four virtual devices starts XLA's CPU client with 16 threads to run
    programs (and as many for the operations within them), not max(cores, 4): with 4, a
    model-parallel all-gather deadlocked on a busy 2-core machine
    (`give_virtual_devices_threads`)."""
    program = ("import os; from app.cli import main; main(['info']); "
               "print(os.environ['PJRT_NPROC'], len(os.listdir('/proc/self/task')))")
    environment = subprocess_environment("jax", FOUR_DEVICES)
    for variable in ("PJRT_NPROC", "NPROC"):  # the machine's own would decide instead
        environment.pop(variable, None)
    runs = [subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, cwd=REPO,
                             env=dict(environment, **user))
            for user in ({}, {"PJRT_NPROC": "4"})]
    (given, given_threads), (users, users_threads) = [
        run.communicate(timeout=300)[0].split()[-2:] for run in runs]
    assert (given, users) == ("16", "4")
    assert int(given_threads) - int(users_threads) >= 16 - 4  # the client's own pool at least


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution.ModelParallel is JAX's")
def test_fit_prints_how_each_variable_is_sharded(tmp_path):
    result = run_subprocess(["-m", "app", "fit", "--distribution", "model-parallel",
                             "--set", f"output.dir={tmp_path}", "--set", "model.size=student",
                             "--set", "training.epochs=1", "--set", "training.verbose=2"],
                            env=TWO_DEVICES)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "model-parallel on a mesh of batch 1 × model 2:" in result.stdout
    assert "devices           2 (model-parallel, mesh batch 1 × model 2)" in result.stdout
    assert [line.split() for line in result.stdout.splitlines()
            if line.strip().startswith("dense_0/kernel")] == [
        ["dense_0/kernel", "64×32", "(·,", "model)"]]
    run_dir, = tmp_path.iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["distribution"]["mesh"] == {"batch": 1, "model": 2}


# Several processes ------------------------------------------------------------------------

def test_a_cluster_comes_from_the_flags_or_keras_variables():
    assert read_cluster() == Cluster() and not Cluster().several
    assert read_cluster("10.0.0.2:1234", 2, 1, environ={}) == Cluster("10.0.0.2:1234", 2, 1)
    environ = {"KERAS_DISTRIBUTION_JOB_ADDRESSES": "10.0.0.2:1234",
               "KERAS_DISTRIBUTION_NUM_PROCESSES": "4", "KERAS_DISTRIBUTION_PROCESS_ID": "3"}
    assert read_cluster(environ=environ) == Cluster("10.0.0.2:1234", 4, 3)
    assert read_cluster(process_id=2, environ=environ).process_id == 2  # a flag wins


@pytest.mark.parametrize("arguments, message", [
    (dict(num_processes=2), "--num-processes 2 needs --coordinator HOST:PORT"),
    (dict(coordinator="10.0.0.2:1234", num_processes=2),
     "--num-processes 2 needs --coordinator HOST:PORT (process 0's address) and --process-id"),
    (dict(coordinator="10.0.0.2", num_processes=2, process_id=0),
     "--coordinator must be HOST:PORT, e.g. 10.0.0.2:1234; got '10.0.0.2'"),
    (dict(coordinator="h:1", num_processes=2, process_id=2),
     "--process-id must be 0 to 1 for 2 processes; got 2"),
])
def test_an_incomplete_cluster_is_one_line(arguments, message):
    with pytest.raises(UserError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        read_cluster(**arguments, environ={})
    with pytest.raises(UserError, match="KERAS_DISTRIBUTION_PROCESS_ID must be an integer"):
        read_cluster(environ={"KERAS_DISTRIBUTION_PROCESS_ID": "one"})


@pytest.mark.parametrize("backend, strategy, message", [
    ("tensorflow", "mirrored", "fails in Keras 3.15 (keras-team/keras#20585); use --backend "
                               "jax --distribution data-parallel with --coordinator"),
    ("torch", "none", "Keras 3 has no multi-device training on the torch backend"),
    ("jax", "none", "--num-processes 2 trains data-parallel over the devices of every "
                    "process; add --distribution data-parallel"),
    ("jax", "model-parallel", "add --distribution data-parallel"),
])
def test_several_processes_are_refused_where_they_cannot_train(backend, strategy, message):
    with pytest.raises(UserError) as error:
        check_cluster(Cluster("h:1", 2, 0), DistributionConfig(strategy=strategy), backend)
    assert message in str(error.value)
    check_cluster(Cluster(), DistributionConfig(strategy=strategy), backend)


CLUSTER = ["--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "0"]


@pytest.mark.parametrize("command", [["fit"], ["tune"], ["distill", "--teacher", "nowhere"]])
def test_the_cli_refuses_an_impossible_cluster_before_anything_starts(command, run_cli,
                                                                      runs_dir):
    strategy = "none" if BACKEND == "jax" else STRATEGY.get(BACKEND, "none")
    code, _, err = run_cli(*command, *CLUSTER, "--distribution", strategy)
    assert code == 2 and err.count("\n") == 1, err
    assert not runs_dir.exists()


def test_resuming_in_several_processes_refuses_a_run_that_was_not_data_parallel(
        run_cli, runs_dir, monkeypatch):
    interrupt_at(monkeypatch, 0, 2)
    code, _, _ = run_cli(*fit_arguments("training.epochs=1", "training.steps_per_execution=1",
                                        "output.name=run", "output.timestamp=false"))
    assert code == 130
    monkeypatch.undo()
    partial = runs_dir / "run.partial"
    code, _, err = run_cli("fit", "--resume", str(partial), *CLUSTER)
    assert (code, err) == (2, "error: --num-processes resumes data-parallel runs; this run's "
                              "config.yaml has distribution.strategy: none, so resume it in "
                              "one process\n")
    assert partial.is_dir()


@pytest.mark.skipif(BACKEND != "jax", reason="several processes train on JAX only")
@pytest.mark.parametrize("processes", [1, 2])
def test_the_resume_hint_of_a_run_in_several_processes_says_to_resume_in_each(
        processes, monkeypatch, tmp_path):
    import jax

    from app.commands.fit import resume_hint

    monkeypatch.setattr(jax, "process_count", lambda: processes)
    each = (" in each of its processes, with --coordinator, --num-processes and --process-id"
            if processes > 1 else "")
    assert resume_hint(tmp_path) == (f"the run is kept in {tmp_path}; resume it with: python -m "
                                     f"app fit --resume {tmp_path} --backend jax{each}")


@pytest.mark.parametrize("arguments, message", [
    (["--chief", "127.0.0.1:2"], "--num-processes trains every trial across the processes; "
                                 "--resume, --chief and --worker run a search in one process"),
    (["--resume", "runs/x.partial"], "--num-processes trains every trial across the processes"),
    (["--set", "tuning.trials_per_process=5"],
     "with --num-processes each process runs the trials itself; set "
     "tuning.trials_per_process: 0"),
])
def test_tune_in_several_processes_refuses_what_runs_in_one(arguments, message, run_cli,
                                                            runs_dir):
    code, _, err = run_cli("tune", *CLUSTER, "--distribution", "data-parallel", *arguments)
    assert code == 2 and err.startswith(f"error: {message}") and err.count("\n") == 1
    assert not runs_dir.exists()


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# The same start and updates on one device or several, with SGD: Adam divides by the root of
# tiny second moments, which magnifies the order of the devices' sums.
SGD_SETTINGS = ["model.size=student", "model.dropout=0.0", "training.epochs=2",
                "training.verbose=0", "training.batch_size=32", "output.timestamp=false",
                "optimizer.name=sgd", "optimizer.momentum=0.9", "schedule.lr=0.05"]
# One step per call, so that a run interrupted at a batch's end resumes exactly.
FIT_SETTINGS = [*SGD_SETTINGS, "training.steps_per_execution=1"]


def as_flags(settings):
    return [flag for setting in settings for flag in ("--set", setting)]


def run_in_two_processes(arguments, output=None, verb="trained"):
    """Runs `python -m app *arguments` as processes 0 and 1 of two, two virtual devices each,
    writing into `output / "zero"` and `output / "one"` (`None`: where `arguments` say);
    returns both results. Process 1 says it `verb` with process 0; process 0 has not imported
    TensorFlow."""
    coordinator = f"127.0.0.1:{free_port()}"
    environment = subprocess_environment("jax", TWO_DEVICES)

    def placed(folder):
        return [] if output is None else ["--set", f"output.dir={output / folder}"]

    # Process 1 as a launcher starts it, from Keras's variables; process 0 from the flags.
    second = subprocess.Popen(
        [sys.executable, "-m", "app", *arguments, *placed("one")],
        env={**environment, "KERAS_DISTRIBUTION_JOB_ADDRESSES": coordinator,
             "KERAS_DISTRIBUTION_NUM_PROCESSES": "2", "KERAS_DISTRIBUTION_PROCESS_ID": "1"},
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = run_subprocess(["-c", APP_TELLING_IF_TENSORFLOW_CAME, *arguments, "--coordinator",
                            coordinator, "--num-processes", "2", "--process-id", "0",
                            *placed("zero")], env=TWO_DEVICES)
    out, err = second.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 0, first.stderr[-2000:] + err[-2000:]
    assert first.stdout.strip().endswith("tensorflow imported: False")
    assert out.strip().endswith(f"process 1 of 2: {verb} with process 0, which writes the run "
                                "directory")
    assert output is None or not (output / "one").exists()
    return first, subprocess.CompletedProcess(second.args, 0, out, err)


def max_weight_difference(first, second):
    weights = [keras.saving.load_model(path).get_weights() for path in (first, second)]
    return max(float(np.max(np.abs(a - b))) for a, b in zip(*weights))


def data_parallel(command, settings):
    return [command, "--distribution", "data-parallel", *as_flags(settings)]


@pytest.fixture(scope="module")
def four_devices_fit(tmp_path_factory):
    """`fit` on four devices of one process: the run that two processes of two devices
    each, or a run interrupted and resumed across them, must match."""
    output = tmp_path_factory.mktemp("four-devices")
    result = run_subprocess(["-m", "app", *data_parallel("fit", FIT_SETTINGS),
                             "--set", f"output.dir={output}"], env=FOUR_DEVICES)
    assert_ran_on_devices(result, output, "data-parallel", 4)
    return output / "mlp-student"


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "jax", reason="several processes train on JAX only")
def test_two_processes_train_to_the_weights_of_one_and_only_process_zero_writes(
        four_devices_fit, tmp_path):
    first, _ = run_in_two_processes(data_parallel("fit", FIT_SETTINGS), tmp_path)
    assert "devices           4 (data-parallel, 2 processes)" in first.stdout
    runs = [tmp_path / "zero" / "mlp-student", four_devices_fit]
    metrics = [json.loads((run / "metrics.json").read_text()) for run in runs]
    assert metrics[0]["distribution"] == {"strategy": "data-parallel", "replicas": 4,
                                          "processes": 2}
    assert metrics[0]["best"]["epoch"] == metrics[1]["best"]["epoch"]
    assert metrics[0]["best"]["value"] == pytest.approx(metrics[1]["best"]["value"], rel=1e-5)
    assert max_weight_difference(*(run / "best.keras" for run in runs)) < 1e-5


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "jax", reason="several processes train on JAX only")
def test_a_run_interrupted_on_one_process_resumes_on_two_to_the_weights_of_one(
        four_devices_fit, tmp_path):
    """The training state holds whole variables, whatever the processes that saved it."""
    interrupted = run_subprocess(["tests/interrupted_fit.py", "1", "4",
                                  *data_parallel("fit", FIT_SETTINGS),
                                  "--set", f"output.dir={tmp_path}"], env=FOUR_DEVICES)
    assert interrupted.returncode == 130, interrupted.stderr[-2000:]
    partial = tmp_path / "mlp-student.partial"
    assert load_training_state(partial / "training_state.npz").epoch == 1
    run_in_two_processes(["fit", "--resume", str(partial)], verb="resumed")
    assert not partial.exists()
    runs = [tmp_path / "mlp-student", four_devices_fit]
    histories = [read_history_csv(run / "history.csv") for run in runs]
    assert histories[0].keys() == histories[1].keys()
    for key in histories[1]:
        np.testing.assert_allclose(histories[0][key], histories[1][key], rtol=1e-5)
    assert max_weight_difference(*(run / "best.keras" for run in runs)) < 1e-5


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "jax", reason="several processes train on JAX only")
def test_tune_in_two_processes_runs_the_trials_of_one(tmp_path):
    arguments = data_parallel("tune", [*SGD_SETTINGS, "search={model.width: {choice: [16, 32]}}",
                                       "tuning.max_trials=2"])
    run_in_two_processes(arguments, tmp_path)
    single = run_subprocess(["-m", "app", *arguments, "--set", f"output.dir={tmp_path / 'single'}"],
                            env=FOUR_DEVICES)
    assert_ran_on_devices(single, tmp_path / "single", "data-parallel", 4)
    runs = [tmp_path / folder / "mlp-student-search" for folder in ("zero", "single")]
    metrics = [json.loads((run / "metrics.json").read_text()) for run in runs]
    assert metrics[0]["distribution"]["processes"] == 2
    # Every trial trained across both processes: the same values, scored as on one process.
    boards = [list(csv.DictReader((run / "leaderboard.csv").read_text().splitlines()))
              for run in runs]
    assert [row["model.width"] for row in boards[0]] == [row["model.width"] for row in boards[1]]
    assert [float(row["val_loss"]) for row in boards[0]] == pytest.approx(
        [float(row["val_loss"]) for row in boards[1]], rel=1e-5)
    assert max_weight_difference(*(run / "best.keras" for run in runs)) < 1e-5


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    from app.cli import main

    runs = tmp_path_factory.mktemp("teacher")
    # 1,256 training and 268 validation samples, which four devices share without trimming,
    # so that a student on one device sees the same data.
    assert main(["fit", *as_flags(["data.test_fraction=0.1515", "data.validation_fraction=0.149",
                                   "training.epochs=2", "training.verbose=0",
                                   "output.timestamp=false", f"output.dir={runs}",
                                   "output.name=teacher"])]) == 0
    return runs / "teacher"


def distill_arguments(teacher_run, strategy):
    return ["distill", "--teacher", str(teacher_run), "--distribution", strategy,
            *as_flags([*SGD_SETTINGS, "output.name=distilled"])]


def assert_same_students(runs):
    for student in ("best.keras", "scratch/best.keras"):  # distilled, and from the labels
        assert max_weight_difference(*(run / student for run in runs)) < 1e-5


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "tensorflow", reason="on JAX the next test distills on four "
                    "devices in two processes against one device")
def test_distill_on_two_devices_trains_the_students_of_one_device(teacher_run, tmp_path):
    # One device: `mirrored` over the one CPU, whose strategies shuffle the arrays with Keras
    # instead of `Batches` (`app.feeding`).
    for devices, launch in [("two", APP_ON_TWO_DEVICES[BACKEND]), ("one", ["-m", "app"])]:
        result = run_subprocess([*launch, *distill_arguments(teacher_run, "mirrored"),
                                 "--set", f"output.dir={tmp_path / devices}"], env=TWO_DEVICES)
        assert result.returncode == 0, result.stderr[-3000:]
    runs = [tmp_path / devices / "distilled" for devices in ("two", "one")]
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    assert metrics["distribution"] == {"strategy": "mirrored", "replicas": 2}
    assert_same_students(runs)


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "jax", reason="several processes train on JAX only")
def test_distill_in_two_processes_trains_the_students_of_one_device(teacher_run, tmp_path,
                                                                    run_cli, runs_dir):
    run_in_two_processes(distill_arguments(teacher_run, "data-parallel"), tmp_path)
    code, _, err = run_cli(*distill_arguments(teacher_run, "none"))  # this process: one device
    assert code == 0, err
    runs = [tmp_path / "zero" / "distilled", runs_dir / "distilled"]
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    assert metrics["distribution"] == {"strategy": "data-parallel", "replicas": 4,
                                       "processes": 2}
    assert_same_students(runs)


@pytest.mark.skipif(BACKEND != "jax", reason="model-parallel is JAX's")
def test_distill_refuses_model_parallel_in_one_line(run_cli, runs_dir):
    code, _, err = run_cli("distill", "--teacher", "nowhere", "--distribution", "model-parallel")
    assert code == 2 and err == ("error: distill trains a student beside its teacher, and "
                                 "model-parallel lays out one model; use --distribution "
                                 "data-parallel\n")
    assert not runs_dir.exists()
