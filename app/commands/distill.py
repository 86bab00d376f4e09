"""`python -m app distill --teacher RUN_DIR`: a small student learns from a trained teacher.

The student (the `model` section, a `student` preset unless configured) is trained twice with
the same budget, seed and callbacks: once from the labels alone ("scratch") and once with
Keras's `Distiller` (`app.distillation`). Both use the teacher's data and splits, so the three
test accuracies in `metrics.json` are comparable and no test sample was ever seen by the
teacher.

```python
run_dir, metrics = run_distill(load_config(defaults=STUDENT_DEFAULTS), "runs/mlp-teacher")
metrics["distillation"]["distilled"]["test_accuracy"]
```
"""

from app.commands.arguments import (BACKEND, CONFIGURED, DISTRIBUTED, cluster_of,
                                    distribution_flags, positive_float, prepare,
                                    run_beside_process_zero)
from app.distillation import STUDENT_DEFAULTS
from app.errors import UserError


def add_parser(commands):
    parser = commands.add_parser(
        "distill", parents=[BACKEND, CONFIGURED, DISTRIBUTED],
        help="distil a trained teacher into a small student",
        description="Train the student (the model section; model.size defaults to student) "
                    "from the labels alone and by distillation from the teacher in RUN_DIR, "
                    "with the same budget, on the teacher's data and splits; write "
                    "runs/<name>-<timestamp>/ with the distilled student as best.keras and "
                    "teacher/scratch/distilled test accuracy in metrics.json.",
    )
    parser.add_argument("--teacher", required=True, metavar="RUN_DIR",
                        help="run directory of the teacher (from fit or tune)")
    parser.add_argument("--temperature", type=positive_float,
                        help="config: distillation.temperature")
    parser.add_argument("--alpha", type=float, help="config: distillation.alpha (label weight)")
    parser.set_defaults(handler=handle)


def handle(arguments):
    from app.reporting import format_summary

    flags = {**distribution_flags(arguments), "distillation.temperature": arguments.temperature,
             "distillation.alpha": arguments.alpha}
    cluster = cluster_of(arguments)
    config = prepare(arguments, flags, defaults=STUDENT_DEFAULTS, cluster=cluster)
    if cluster.process_id > 0:
        run_beside_process_zero(run_distill, config, cluster, arguments.teacher)
        return 0
    run_dir, metrics = run_distill(config, arguments.teacher)
    print(format_summary(metrics, run_dir))
    print(format_comparison(metrics["distillation"]))
    return 0


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
    from app.config import load_config
    from app.distillation import with_teacher_data
    from app.engine import check_model_fits_data, resolve_config, train_and_test
    from app.rundir import (BEST_MODEL_FILE, CONFIG_FILE, SCRATCH_DIR, Staging,
                            check_run_directory, load_run_dataset, plan_run_directory,
                            write_reports, write_run_start)

    _check_supported(config)
    teacher_dir = check_run_directory(teacher_dir)
    teacher_config = load_config(teacher_dir / CONFIG_FILE)
    config = with_teacher_data(config, teacher_config)
    dataset = load_run_dataset(teacher_dir, teacher_config,
                               remedy="retrain the teacher on the current data")
    check_model_fits_data(config.model, dataset)
    name = config.output.name or f"{config.model.architecture}-{config.model.size}-distilled"
    run_dir = plan_run_directory(config.output, name)
    config = resolve_config(config, name)

    import callbacks  # noqa: F401  (registers the schedules and losses a teacher may hold)
    from app.feeding import evaluation_inputs
    from app.model_files import load_model_file

    teacher = load_model_file(teacher_dir / BEST_MODEL_FILE)
    if config.distillation.feature_layers:  # before any training, not after the scratch run
        from app.distillation import check_feature_layers
        from app.tables.architectures import build_model

        student = build_model(config.model, dataset.input_shape, dataset.num_classes)
        check_feature_layers(teacher, student, config.distillation)
    teacher_loss, teacher_accuracy = teacher.evaluate(
        **evaluation_inputs(dataset.x_test, dataset.y_test, config), verbose=0)
    with Staging(run_dir, renumber=config.output.timestamp) as staging:
        write_run_start(staging.folder, config, dataset.class_names)
        scratch_dir = staging.folder / SCRATCH_DIR
        scratch_dir.mkdir()
        print("student from scratch (labels only):")
        scratch_history, scratch = train_and_test(config, dataset, scratch_dir / BEST_MODEL_FILE)
        write_reports(scratch_dir, scratch_history, scratch,
                      title=f"{staging.final_path.name} (scratch)")
        print(f"distilled student ({_describe(config.distillation)}):")
        history, metrics = train_and_test(config, dataset, staging.folder / BEST_MODEL_FILE,
                                          teacher_path=teacher_dir / BEST_MODEL_FILE)
        metrics["distillation"] = {
            # The run's name, not its absolute path: metrics and the exported package's
            # metadata travel to other machines and must not carry local folder names.
            "teacher_run": teacher_dir.resolve().name,
            "temperature": config.distillation.temperature,
            "alpha": config.distillation.alpha,
            "feature_layers": config.distillation.feature_layers,
            "teacher": {"test_accuracy": float(teacher_accuracy),
                        "test_loss": float(teacher_loss),
                        "parameters": int(teacher.count_params())},
            "scratch": _summary(scratch),
            "distilled": _summary(metrics),
        }
        write_reports(staging.folder, history, metrics, title=staging.final_path.name)
        path = staging.commit()
    return path, metrics


def _check_supported(config):
    if config.distribution.strategy == "model-parallel":
        raise UserError("distill trains a student beside its teacher, and model-parallel lays "
                        "out one model; use --distribution data-parallel")
    if config.training.noise_scale:
        raise UserError("training.noise_scale measures the label loss alone and does not "
                        "apply to distill; set it to false")
    if config.training.pruning.enabled:
        raise UserError("training.pruning does not apply to distill; prune the distilled "
                        "student afterwards: python -m app prune RUN_DIR --sparsity S")
    if config.training.fine_tune.enabled:
        raise UserError("training.fine_tune does not apply to distill yet (the student trains "
                        "whole); set training.fine_tune.epochs to null")


def _describe(distillation):
    parts = [f"T={distillation.temperature:g}", f"alpha={distillation.alpha:g}"
             + (", function matching" if distillation.alpha == 0 else "")]
    if distillation.feature_layers:
        teacher_layer, student_layer = distillation.feature_layers
        parts.append(f"features {teacher_layer} → {student_layer} "
                     f"× {distillation.feature_weight:g}")
    return ", ".join(parts)


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
