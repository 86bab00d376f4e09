"""`python -m app distill --teacher RUN_DIR`: a small student learns from a trained teacher.

The student (the `model` section, a `student` preset unless configured) is trained twice with
the same budget, seed and callbacks: once from the labels alone ("scratch") and once with
Keras's `Distiller` on α·CE(y, s) + (1−α)·T²·KL(softmax(t/T) ‖ softmax(s/T)). Both use the
teacher's data and splits, so the three test accuracies in `metrics.json` are comparable and
no test sample was ever seen by the teacher.

Keras 3.15's `LogitsDistillation` with its default `loss="kl_divergence"` applies the loss to
raw logits, skipping the softmax and the T² factor (a measured loss of 25.10 where T²·KL is
5.99); a `keras.losses.KLDivergence()` instance takes the correct path, which
`tests/test_distillation.py` checks against NumPy.

```python
run_dir, metrics = run_distill(load_config(defaults=STUDENT_DEFAULTS), "runs/mlp-teacher")
metrics["distillation"]["distilled"]["test_accuracy"]
```
"""

import dataclasses
import json

from app.config import DataConfig, dump_config, load_config
from app.errors import UserError
from app.rundir import StagedRunDirectory, plan_run_directory
from app.training import (CLASS_NAMES_FILE, check_model_fits_data, resolve, train_and_test,
                          write_reports)

# `distill` builds a student unless the configuration says otherwise.
STUDENT_DEFAULTS = {"model.size": "student"}
SCRATCH_DIR = "scratch"


def build_distiller(teacher, student, distillation):
    """Wraps a compiled `student` in a compiled `keras.distillation.Distiller`.

    Args:
        teacher: the trained teacher (outputs logits); it is frozen.
        student: a compiled student (`build_compiled_model`) that outputs logits; the
            distiller trains it with its optimizer, loss and metrics.
        distillation: an `app.config.DistillationConfig` (temperature and α).

    Example:

    ```python
    distiller = build_distiller(teacher, student, DistillationConfig(temperature=4, alpha=0.1))
    distiller.fit(x, y, epochs=10)   # trains `student`
    ```
    """
    import keras

    distiller = keras.distillation.Distiller(
        teacher=teacher,
        student=student,
        # An instance, not the string "kl_divergence": only the instance gets the softmax
        # and the T² factor (see the module docstring).
        distillation_losses=keras.distillation.LogitsDistillation(
            temperature=distillation.temperature, loss=keras.losses.KLDivergence()),
        student_loss_weight=distillation.alpha,
    )
    distiller.compile(optimizer=student.optimizer, loss=student.loss,
                      metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    return distiller


def run_distill(config, teacher_dir):
    """Trains the student from scratch and by distillation; writes one run directory.

    Args:
        config: the student's configuration (`model`, training keys, `distillation`).
        teacher_dir: a run directory of `fit` (or `tune`) holding the teacher.

    Returns:
        `(run_dir, metrics)`: `best.keras` and the top-level metrics are the distilled
        student's; `scratch/` holds the student trained on labels alone, and
        `metrics["distillation"]` compares teacher, scratch and distilled.
    """
    from app.evaluation import check_run_directory, load_run_dataset

    teacher_dir = check_run_directory(teacher_dir)
    teacher_config = load_config(teacher_dir / "config.yaml")
    config = _with_teacher_data(config, teacher_config)
    _check_supported(config)
    dataset = load_run_dataset(teacher_dir, teacher_config,
                               remedy="retrain the teacher on the current data")
    check_model_fits_data(config.model, dataset)
    name = config.output.name or f"{config.model.architecture}-{config.model.size}-distilled"
    run_dir = plan_run_directory(config.output, name)
    config = resolve(config, name)

    import keras

    import callbacks  # noqa: F401  (registers the schedules and losses a teacher may hold)

    teacher = keras.saving.load_model(teacher_dir / "best.keras")
    teacher_loss, teacher_accuracy = teacher.evaluate(
        dataset.x_test, dataset.y_test, batch_size=config.training.batch_size, verbose=0)
    with StagedRunDirectory(run_dir) as run:
        (run.staging / "config.yaml").write_text(dump_config(config))
        (run.staging / CLASS_NAMES_FILE).write_text(json.dumps(dataset.class_names) + "\n")
        scratch_dir = run.staging / SCRATCH_DIR
        scratch_dir.mkdir()
        print("student from scratch (labels only):")
        scratch_history, scratch = train_and_test(config, dataset, scratch_dir)
        write_reports(scratch_dir, scratch_history, scratch, title=f"{run_dir.name} (scratch)")
        print(f"distilled student (T={config.distillation.temperature:g}, "
              f"alpha={config.distillation.alpha:g}):")
        history, metrics = train_and_test(config, dataset, run.staging, teacher=teacher)
        metrics["distillation"] = {
            "teacher_run": str(teacher_dir.resolve()),
            "temperature": config.distillation.temperature,
            "alpha": config.distillation.alpha,
            "teacher": {"test_accuracy": float(teacher_accuracy),
                        "test_loss": float(teacher_loss),
                        "parameters": int(teacher.count_params())},
            "scratch": _summary(scratch),
            "distilled": _summary(metrics),
        }
        write_reports(run.staging, history, metrics, title=run_dir.name)
        path = run.commit()
    return path, metrics


def _with_teacher_data(config, teacher_config):
    """`config` on the teacher's data and splits (`data.split_seed` pins them)."""
    teacher_data = teacher_config.data
    split_seed = (teacher_data.split_seed if teacher_data.split_seed is not None
                  else teacher_config.seed)
    data = dataclasses.replace(teacher_data, split_seed=split_seed)
    # A distilled run's own config.yaml holds exactly `data`, so it can be run again.
    if config.data not in (DataConfig(), teacher_data, data):
        raise UserError("distill trains on the teacher's data and splits; drop the data "
                        "section from the student's configuration")
    return dataclasses.replace(config, data=data)


def _check_supported(config):
    if config.distribution.strategy != "none":
        raise UserError("distill runs on one device; set distribution.strategy: none")
    if config.training.noise_scale:
        raise UserError("training.noise_scale measures the label loss alone and does not "
                        "apply to distill; set it to false")


def _summary(metrics):
    return {"test_accuracy": metrics["test"]["accuracy"], "test_loss": metrics["test"]["loss"],
            "best_epoch": metrics["best"]["epoch"], "epochs_run": metrics["epochs_run"],
            "parameters": metrics["parameters"], "train_seconds": metrics["train_seconds"]}


def format_comparison(distillation):
    """Three lines: teacher, scratch and distilled test accuracy, with parameter counts."""
    rows = [("teacher", distillation["teacher"]), ("student, scratch", distillation["scratch"]),
            ("student, distilled", distillation["distilled"])]
    return "\n".join(f"{label:<20}test accuracy {row['test_accuracy']:.4f}  "
                     f"({row['parameters']:,} parameters)" for label, row in rows)

