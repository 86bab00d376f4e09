"""How the training step runs (`app.execution`): mixed precision against float32, loss
scaling's skipped steps, several steps per execution against one, and `auto`."""

import json

import keras
import numpy as np
import pytest

from app.config import load_config
from app.data import load_dataset
from app.engine import build_compiled_model, fit_configured, resolve_config
from app.errors import UserError
from app.execution import AUTO_STEPS_PER_EXECUTION, check_execution, steps_per_execution
from callbacks import GradientAccumulation, Lookahead, RAdam
from tests.helpers import BACKEND, fit, fit_arguments

# Four epochs of the default MLP on digits, without early stopping.
SHORT = ("training.epochs=4", "early_stopping.enabled=false", "output.timestamp=false")
# How far a 16-bit run may end from the float32 run (README, "Mixed precision").
PRECISION_TOLERANCE = {"val_loss": 0.05, "test_accuracy": 0.03}


def run_results(run_cli, runs_dir, name, *overrides):
    fit(run_cli, *SHORT, f"output.name={name}", *overrides)
    history = np.genfromtxt(runs_dir / name / "history.csv", delimiter=",", names=True)
    return history, json.loads((runs_dir / name / "metrics.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains_like_float32(precision, run_cli, runs_dir):
    reference, reference_metrics = run_results(run_cli, runs_dir, "float32")
    history, metrics = run_results(run_cli, runs_dir, precision,
                                   f"training.precision={precision}")
    assert metrics["execution"]["precision"] == precision
    np.testing.assert_allclose(history["val_loss"], reference["val_loss"],
                               atol=PRECISION_TOLERANCE["val_loss"])
    assert abs(metrics["test"]["accuracy"] - reference_metrics["test"]["accuracy"]) <= \
        PRECISION_TOLERANCE["test_accuracy"]
    model = keras.saving.load_model(runs_dir / precision / "best.keras")
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert {layer.compute_dtype for layer in dense} == {precision.split("_")[1]}
    assert {weight.dtype for weight in model.weights} == {"float32"}


def build(*overrides):
    config = resolve_config(load_config(overrides=["training.verbose=0", *overrides]), "test")
    dataset = load_dataset(config.data, seed=config.seed)
    keras.utils.set_random_seed(config.seed)
    return build_compiled_model(config, dataset), config, dataset


@pytest.mark.slow
def test_float16_skips_overflowing_steps_through_every_wrapper_without_a_nan():
    model, config, dataset = build(
        "training.precision=mixed_float16", "training.accumulation_steps=2",
        "optimizer.name=radam", "optimizer.lookahead=true", "training.epochs=2",
        "early_stopping.enabled=false")
    scaling = model.optimizer
    assert isinstance(scaling, keras.optimizers.LossScaleOptimizer)
    accumulation = scaling.inner_optimizer
    assert isinstance(accumulation, GradientAccumulation)
    assert isinstance(accumulation.inner_optimizer, Lookahead)
    assert isinstance(accumulation.inner_optimizer.inner_optimizer, RAdam)
    # A loss scale of 2**40 overflows float16 gradients: the first steps are skipped, each
    # halving the scale, until it fits.
    scaling.build(model.trainable_variables)
    scaling.dynamic_scale.assign(2.0 ** 40)
    history, nan_report = fit_configured(model, config, dataset)
    assert nan_report is None and np.isfinite(history.history["loss"]).all()
    assert float(scaling.dynamic_scale.numpy()) < 2.0 ** 40
    batches = 2 * int(np.ceil(len(dataset.y_train) / config.training.batch_size))
    windows = batches // 2
    skipped = windows - int(scaling.iterations.numpy())
    assert 0 < skipped < windows
    assert all(np.isfinite(keras.ops.convert_to_numpy(weight)).all() for weight in model.weights)


several_steps = pytest.mark.skipif(BACKEND == "torch",
                                   reason="Keras runs one step per call on torch")


@pytest.mark.slow
@several_steps
def test_several_steps_per_execution_train_like_one(run_cli, runs_dir):
    one, _ = run_results(run_cli, runs_dir, "one", "training.steps_per_execution=1")
    several, metrics = run_results(run_cli, runs_dir, "several",
                                   "training.steps_per_execution=5")
    assert metrics["execution"]["steps_per_execution"] == 5
    for column in one.dtype.names:
        np.testing.assert_allclose(several[column], one[column], rtol=1e-4, atol=1e-6)


def test_auto_picks_per_backend_and_one_step_for_per_batch_features():
    assert steps_per_execution(load_config(), BACKEND) == AUTO_STEPS_PER_EXECUTION[BACKEND]
    for feature in ("training.accumulation_steps=2", "training.pruning.sparsity=0.5"):
        assert steps_per_execution(load_config(overrides=[feature]), BACKEND) == 1
    mirrored = load_config(overrides=["distribution.strategy=mirrored"])
    assert steps_per_execution(mirrored, "tensorflow") == 1
    explicit = load_config(overrides=["training.steps_per_execution=3"])
    assert steps_per_execution(explicit, BACKEND) == 3


def test_a_saved_model_keeps_one_step_per_execution_to_load_on_any_backend(tmp_path):
    model, config, _ = build()
    assert model.steps_per_execution == AUTO_STEPS_PER_EXECUTION[BACKEND]
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert loaded.steps_per_execution == 1  # Keras-torch refuses more when it compiles one


@pytest.mark.parametrize("feature", ["training.accumulation_steps=2",
                                     "training.pruning.sparsity=0.5"])
def test_several_steps_per_execution_with_a_per_batch_feature_is_one_line(feature, run_cli,
                                                                          runs_dir):
    code, _, err = run_cli(*fit_arguments("training.steps_per_execution=4", feature))
    assert code == 2 and err.count("\n") == 1, err
    assert "training.steps_per_execution 4 runs 4 batches per call" in err
    assert "set training.steps_per_execution to 1 or auto" in err
    assert not runs_dir.exists()


@several_steps
def test_a_nan_stops_training_with_several_steps_per_execution(run_cli, runs_dir):
    code, _, err = run_cli(*fit_arguments(
        "optimizer.name=sgd", "schedule.lr=1e30", "model.normalization=none",
        "training.epochs=2", "training.steps_per_execution=4"))
    assert code == 2 and err.startswith("error: training diverged in epoch 1, batch "), err


@pytest.mark.skipif(BACKEND != "torch", reason="the other backends run several steps per call")
def test_torch_refuses_several_steps_per_execution_in_one_line(run_cli, runs_dir):
    code, _, err = run_cli(*fit_arguments("training.steps_per_execution=4"))
    assert code == 2 and err == ("error: training.steps_per_execution 4 is not supported on "
                                 "the torch backend (Keras runs one step per call there); set "
                                 "it to 1 or auto\n")
    assert not runs_dir.exists()


def test_several_steps_per_execution_under_mirrored_is_one_line():
    config = load_config(overrides=["training.steps_per_execution=4",
                                    "distribution.strategy=mirrored"])
    with pytest.raises(UserError, match="^training.steps_per_execution 4 fails under "
                                        "TensorFlow's mirrored strategy in Keras 3.15; set it "
                                        "to 1 or auto$"):
        check_execution(config, "tensorflow")
    check_execution(config, "jax")  # the strategy itself is refused there, by its own check


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "tensorflow", reason="in-process export needs TensorFlow")
def test_a_mixed_float16_run_exports_and_verifies(run_cli, runs_dir):
    fit(run_cli, *SHORT, "output.name=mixed", "training.precision=mixed_float16",
        "model.architecture=cnn", "model.size=student")
    code, _, err = run_cli("export", str(runs_dir / "mixed"))
    assert code == 0, err
    verification = json.loads((runs_dir / "mixed" / "mixed.verification.json").read_text())
    assert verification["passed"]
