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


def numpy_similarity(features):
    flat = features.reshape(len(features), -1).astype(np.float64)
    gram = flat @ flat.T
    return gram / np.linalg.norm(gram, axis=1, keepdims=True)


def test_similarity_distillation_matches_numpy_for_layers_of_different_shapes():
    from callbacks import SimilarityDistillation

    rng = np.random.default_rng(0)
    teacher_features = rng.normal(size=(12, 4, 4, 32)).astype(np.float32)
    student_features = rng.normal(size=(12, 2, 2, 8)).astype(np.float32)
    loss = SimilarityDistillation("a", "b").compute_loss(teacher_features, student_features)
    expected = np.mean((numpy_similarity(teacher_features)
                        - numpy_similarity(student_features)) ** 2)
    assert float(keras.ops.convert_to_numpy(loss)) == pytest.approx(expected, rel=1e-4)
    # The same features give zero; the loss does not depend on the features' scale.
    assert float(keras.ops.convert_to_numpy(SimilarityDistillation("a", "b").compute_loss(
        student_features, 3 * student_features))) == pytest.approx(0.0, abs=1e-7)
    restored = SimilarityDistillation.from_config(SimilarityDistillation("a", "b").get_config())
    assert (restored.teacher_layer_name, restored.student_layer_name) == ("a", "b")
    assert keras.saving.get_registered_object(
        "efficient_learning>SimilarityDistillation") is SimilarityDistillation


def test_feature_layers_add_the_weighted_similarity_term():
    teacher, student = logits_model(32, seed=1), logits_model(4, seed=2)
    student.compile(optimizer="adam",
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    teacher_layer, student_layer = teacher.layers[1].name, student.layers[1].name
    config = DistillationConfig(temperature=2.0, alpha=0.3,
                                feature_layers=[teacher_layer, student_layer], feature_weight=50.0)
    distiller = build_distiller(teacher, student, config)
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(16, 6)) * 3).astype(np.float32)
    y = rng.integers(0, 5, size=16)
    loss = distiller.compute_loss(x, y, y_pred=student(x), training=False)

    def hidden(model, name):
        return keras.ops.convert_to_numpy(
            keras.Model(model.inputs, model.get_layer(name).output)(x))

    def logits(model):
        return keras.ops.convert_to_numpy(model(x)).astype(np.float64)

    logits_term = numpy_distillation_loss(y, logits(teacher), logits(student), 2.0, 0.3)
    similarity = np.mean((numpy_similarity(hidden(teacher, teacher_layer))
                          - numpy_similarity(hidden(student, student_layer))) ** 2)
    expected = logits_term + (1 - 0.3) * 50.0 * similarity
    assert similarity > 1e-3
    assert float(keras.ops.convert_to_numpy(loss)) == pytest.approx(expected, rel=1e-4)


def test_an_unknown_feature_layer_is_one_line_naming_the_layers():
    from app.errors import UserError

    teacher, student = logits_model(32, seed=1), logits_model(4, seed=2)
    student.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    config = DistillationConfig(feature_layers=[teacher.layers[1].name, "conv_9"])
    with pytest.raises(UserError, match="the student has no layer 'conv_9'; its layers are "):
        build_distiller(teacher, student, config)


def test_function_matching_ignores_the_labels():
    """α = 0: the student learns the teacher's function; shuffled labels change nothing."""
    teacher = logits_model(32, seed=1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6)).astype(np.float32)
    y = rng.integers(0, 5, size=32)
    weights = []
    for labels in (y, rng.permutation(y)):
        student = logits_model(4, seed=2)
        student.compile(optimizer=keras.optimizers.SGD(0.1),
                        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        distiller = build_distiller(teacher, student, DistillationConfig(2.0, alpha=0.0))
        distiller.fit(x, labels, epochs=3, batch_size=8, shuffle=False, verbose=0)
        weights.append(student.get_weights())
    for first, second in zip(*weights):
        np.testing.assert_allclose(first, second, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_teacher_and_student_see_the_same_augmented_batch(tmp_path):
    """The first epoch's loss (one batch, α = 0) is T²·KL between the teacher and the
    initial student on the augmented, mixed batch that the pipeline gives, not on the raw one."""
    import dataclasses

    from app.augmentation import build_augmenter
    from app.data import load_dataset
    from app.engine import accuracy_metric, build_compiled_model, resolve_config, train_model
    from app.feeding import fit_inputs

    config = resolve_config(load_config(overrides=[
        "model.architecture=cnn", "model.size=student", "model.normalization=none",
        "model.dropout=0",
        "training.batch_size=32", "training.epochs=1", "training.verbose=0", "seed=5",
        "augmentation.flip=horizontal", "augmentation.mixup=1.0",
        "distillation.alpha=0", "distillation.temperature=2"]), "augmented")
    digits = load_dataset(config.data, seed=0)
    dataset = dataclasses.replace(digits, x_train=digits.x_train[:32], y_train=digits.y_train[:32])
    teacher = build_compiled_model(dataclasses.replace(
        config, model=dataclasses.replace(config.model, size="teacher")), dataset)
    student = build_compiled_model(config, dataset)
    initial = keras.models.clone_model(student)
    initial.set_weights(student.get_weights())
    distiller = build_distiller(teacher, student, config.distillation,
                                metrics=[accuracy_metric(config)])
    history, _, _ = train_model(distiller, config, dataset, tmp_path / "best.keras",
                                kept_model=student)

    augmenter = build_augmenter(config.augmentation, dataset, config.seed)
    images, targets = fit_inputs(dataset, config, augmenter)["x"][0]

    def loss_on(x):
        return numpy_distillation_loss(
            np.zeros(len(x), dtype=int), keras.ops.convert_to_numpy(teacher(x)).astype(np.float64),
            keras.ops.convert_to_numpy(initial(x)).astype(np.float64), 2.0, 0.0)

    assert history["loss"][0] == pytest.approx(loss_on(images), rel=1e-4)
    assert abs(loss_on(images) - loss_on(dataset.x_train)) > 1e-3 * loss_on(images)


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


@pytest.mark.slow
def test_distill_matches_functions_with_feature_layers(teacher_run, run_cli, runs_dir):
    settings = [*FAST, "output.timestamp=false", "output.name=matched",
                "distillation.feature_layers=[dense_1_act,dense_0_act]"]
    code, out, err = run_cli("distill", "--teacher", str(teacher_run), "--alpha", "0",
                             *[part for item in settings for part in ("--set", item)])
    assert code == 0, err
    assert "alpha=0, function matching, features dense_1_act → dense_0_act × 3000" in out
    metrics = json.loads((runs_dir / "matched" / "metrics.json").read_text())
    assert metrics["distillation"]["feature_layers"] == ["dense_1_act", "dense_0_act"]
    history = (runs_dir / "matched" / "history.csv").read_text().splitlines()
    columns = history[0].split(",")
    # α = 0: the label term is never computed; the loss is the distillation terms alone
    # (averaged per sample, where the distiller's own tracker averages per batch).
    row = dict(zip(columns, history[1].split(",")))
    assert float(row["student_loss"]) == 0.0
    assert float(row["loss"]) == pytest.approx(float(row["distillation_loss"]), rel=2e-2)


@pytest.mark.parametrize("arguments,message", [
    (["--teacher", "nowhere"], "nowhere is not a directory; pass a run directory written by fit"),
    (["--alpha", "1.5"], "distillation.alpha must be >= 0.0 and <= 1.0; got 1.5"),
    (["--set", "data.source=iris"], "distill trains on the teacher's data and splits; drop the "
                                    "data section from the student's configuration"),
    (["--set", "training.noise_scale=true"], "training.noise_scale measures the label loss"),
    (["--set", "distillation.feature_layers=[dense_0_act,conv_1_act]"],
     "distillation.feature_layers: the student has no layer 'conv_1_act'; its layers are "),
    (["--set", "distillation.feature_layers=[dense_0_act]"],
     "distillation.feature_layers must be [teacher_layer, student_layer]; got ['dense_0_act']"),
])
def test_distill_errors_are_one_line(arguments, message, teacher_run, run_cli):
    if "--teacher" not in arguments:
        arguments = ["--teacher", str(teacher_run), *arguments]
    code, out, err = run_cli("distill", *arguments)
    assert code == 2
    assert err.startswith(f"error: {message}") and len(err.strip().splitlines()) == 1
