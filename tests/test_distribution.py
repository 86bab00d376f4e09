"""`distribution.strategy`: checked against the backend, clear TPU failures, even sharding,
and weights after training on two devices equal to one device on the same global batch."""

import json

import numpy as np
import pytest

from app.config import DistributionConfig, load_config
from app.data import load_dataset
from app.distribution import Devices, check_distribution, start_distribution
from app.errors import UserError
from tests.helpers import BACKEND, run_subprocess

TWO_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
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


def parity(strategy, *flags):
    result = run_subprocess(["tests/distributed_parity.py", strategy, *flags],
                            env=TWO_DEVICES)
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
@pytest.mark.skipif(BACKEND == "torch", reason="Keras has no multi-device training on torch")
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
    assert result.returncode == 0, result.stderr[-3000:]
    assert "devices           2 (" in result.stdout
    run_dir, = tmp_path.iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["distribution"] == {"strategy": STRATEGY[BACKEND], "replicas": 2}


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
