"""`python -m app distill`: the distillation loss against NumPy, and the command end to end."""

import json

import keras
import numpy as np
import pytest

from app.config import DistillationConfig, load_config
from app.distillation import STUDENT_DEFAULTS, build_distiller
from tests.helpers import BACKEND, FAST, run_subprocess, without_tensorflow_startup_lines


def numpy_distillation_loss(labels, teacher_logits, student_logits, temperature, alpha):
    """α·CE(y, s) + (1−α)·T²·KL(softmax(t/T) ‖ softmax(s/T)), batch means."""

    def log_softmax(z):
        z = z - z.max(axis=-1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))

    cross_entropy = -log_softmax(student_logits)[np.arange(len(labels)), labels].mean()
    log_p_teacher = log_softmax(teacher_logits / temperature)
    log_p_student = log_softmax(student_logits / temperature)
    kl = (np.exp(log_p_teacher) * (log_p_teacher - log_p_student)).sum(axis=-1).mean()
    return alpha * cross_entropy + (1 - alpha) * temperature**2 * kl


def logits_model(width, seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(width, activation="tanh")(inputs)
    return keras.Model(inputs, keras.layers.Dense(5)(hidden))


@pytest.mark.parametrize("temperature,alpha", [(1.0, 0.5), (4.0, 0.1), (2.0, 0.0), (3.0, 1.0)])
def test_distillation_loss_matches_numpy(temperature, alpha):
    teacher, student = logits_model(32, seed=1), logits_model(4, seed=2)
    student.compile(optimizer="adam",
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    distiller = build_distiller(teacher, student, DistillationConfig(temperature, alpha))
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(16, 6)) * 3).astype(np.float32)
    y = rng.integers(0, 5, size=16)
    loss = distiller.compute_loss(x, y, y_pred=student(x), training=False)
    expected = numpy_distillation_loss(y, keras.ops.convert_to_numpy(teacher(x)).astype(np.float64),
                                       keras.ops.convert_to_numpy(student(x)).astype(np.float64),
                                       temperature, alpha)
    assert float(keras.ops.convert_to_numpy(loss)) == pytest.approx(expected, rel=1e-5)


def test_distiller_trains_the_student_and_freezes_the_teacher():
    teacher, student = logits_model(32, seed=1), logits_model(4, seed=2)
    student.compile(optimizer=keras.optimizers.Adam(0.05),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    distiller = build_distiller(teacher, student, DistillationConfig(4.0, 0.1))
    teacher_before = [w.copy() for w in teacher.get_weights()]
    student_before = [w.copy() for w in student.get_weights()]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype(np.float32)
    y = keras.ops.convert_to_numpy(teacher(x)).argmax(axis=-1)
    history = distiller.fit(x, y, epochs=5, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    for before, after in zip(teacher_before, teacher.get_weights()):
        np.testing.assert_array_equal(before, after)
    assert any(not np.array_equal(b, a) for b, a in zip(student_before, student.get_weights()))


def test_distill_defaults_to_a_student_that_the_config_can_override(tmp_path):
    assert load_config(defaults=STUDENT_DEFAULTS).model.size == "student"
    path = tmp_path / "config.yaml"
    path.write_text("model:\n  size: teacher\n  width: 8\n")
    config = load_config(path, defaults=STUDENT_DEFAULTS)
    assert (config.model.size, config.model.width) == ("teacher", 8)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    from app.cli import main

    runs = tmp_path_factory.mktemp("distill") / "runs"
    # A teacher with a schedule and a smoothed loss from `callbacks`, as real ones have.
    arguments = [f"--set={item}" for item in [*FAST, "output.timestamp=false", "seed=7",
                                              "schedule.name=cosine",
                                              "training.label_smoothing=0.1",
                                              f"output.dir={runs}", "output.name=teacher"]]
    assert main(["fit", *arguments]) == 0
    return runs / "teacher"


@pytest.mark.slow
def test_distill_writes_teacher_scratch_and_distilled_side_by_side(teacher_run, run_cli, runs_dir):
    settings = [*FAST, "seed=3", "output.timestamp=false", "output.name=distilled"]
    code, out, err = run_cli("distill", "--teacher", str(teacher_run),
                             *[part for item in settings for part in ("--set", item)],
                             "--temperature", "3", "--alpha", "0.2")
    assert code == 0, err
    run_dir = runs_dir / "distilled"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    teacher_metrics = json.loads((teacher_run / "metrics.json").read_text())
    comparison = metrics["distillation"]
    assert (comparison["temperature"], comparison["alpha"]) == (3.0, 0.2)
    # The teacher by name: metrics and exported metadata travel without local paths.
    assert comparison["teacher_run"] == teacher_run.resolve().name
    assert comparison["teacher"]["test_accuracy"] == pytest.approx(
        teacher_metrics["test"]["accuracy"])
    assert comparison["distilled"]["test_accuracy"] == metrics["test"]["accuracy"]
    scratch = json.loads((run_dir / "scratch" / "metrics.json").read_text())
    assert comparison["scratch"]["test_accuracy"] == scratch["test"]["accuracy"]
    # Same student, same budget: parameters and the epoch limit match; the teacher is bigger.
    assert comparison["scratch"]["parameters"] == comparison["distilled"]["parameters"] \
        == metrics["parameters"] < comparison["teacher"]["parameters"]
    assert max(comparison["scratch"]["epochs_run"], comparison["distilled"]["epochs_run"]) <= 8
    for label in ("teacher", "student, scratch", "student, distilled"):
        assert label in out
    # The teacher's data and splits: the same test set, and `evaluate` rebuilds it.
    config = load_config(run_dir / "config.yaml")
    assert (config.seed, config.data.split_seed) == (3, 7)
    assert metrics["data_fingerprint"] == teacher_metrics["data_fingerprint"]
    assert metrics["samples"] == teacher_metrics["samples"]
    code, out, err = run_cli("evaluate", str(run_dir))
    assert code == 0 and f"accuracy {metrics['test']['accuracy']:.4f}" in out
    # Its config.yaml (the teacher's data, pinned) is accepted by distill again.
    code, out, err = run_cli("distill", "--teacher", str(teacher_run), "--config",
                             str(run_dir / "config.yaml"), "--set", "training.epochs=1",
                             "--set", "output.name=again")
    assert code == 0, err
    # best.keras is the student alone, and it exports (under TensorFlow, from this backend).
    assert keras.saving.load_model(run_dir / "best.keras").count_params() == metrics["parameters"]
    result = run_subprocess(["-m", "app", "export", str(run_dir)], timeout=600)
    assert result.returncode == 0, without_tensorflow_startup_lines(result.stderr)
    verification = json.loads((run_dir / "distilled.verification.json").read_text())
    assert verification["passed"]
    import coremltools as ct

    user = dict(ct.utils.load_spec(str(run_dir / "distilled.mlpackage"))
                .description.metadata.userDefined)
    assert user["teacher_run"] == teacher_run.resolve().name  # a name, not a local path
    assert (float(user["temperature"]), float(user["alpha"])) == (3.0, 0.2)
    assert user["training_backend"] == BACKEND


@pytest.mark.parametrize("arguments,message", [
    (["--teacher", "nowhere"], "nowhere is not a directory; pass a run directory written by fit"),
    (["--alpha", "1.5"], "distillation.alpha must be >= 0.0 and <= 1.0; got 1.5"),
    (["--set", "data.source=iris"], "distill trains on the teacher's data and splits; drop the "
                                    "data section from the student's configuration"),
    (["--set", "training.noise_scale=true"], "training.noise_scale measures the label loss"),
])
def test_distill_errors_are_one_line(arguments, message, teacher_run, run_cli):
    if "--teacher" not in arguments:
        arguments = ["--teacher", str(teacher_run), *arguments]
    code, out, err = run_cli("distill", *arguments)
    assert code == 2
    assert err.startswith(f"error: {message}") and len(err.strip().splitlines()) == 1
