"""`python -m app evaluate RUN_DIR`: score a finished run's `best.keras` again.

By default it rebuilds the run's own split from `config.yaml` (the same seed gives the same
split) and reports the test split, which reproduces `metrics.json`; `--split` picks another
split and `--data` scores a different dataset with the model's classes.

```python
result = run_evaluate("runs/mlp-teacher-20261122-042152", split="validation")
result["accuracy"], result["samples"]
```
"""

import dataclasses

from app.commands.arguments import BACKEND, start_backend
from app.errors import UserError

SPLITS = ("train", "validation", "test")


def add_parser(commands):
    parser = commands.add_parser(
        "evaluate", parents=[BACKEND], help="evaluate a run's best.keras again",
        description="Evaluate RUN_DIR/best.keras on a split of the run's data or on other data.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("--split", choices=SPLITS, default="test")
    parser.add_argument("--data", help="score this dataset (path or bundled name) instead")
    parser.set_defaults(handler=handle)


def handle(arguments):
    start_backend(arguments.backend)
    result = run_evaluate(arguments.run_dir, split=arguments.split, data_source=arguments.data)
    print(f"{result['data']}: accuracy {result['accuracy']:.4f}  loss {result['loss']:.4f}  "
          f"({result['samples']} samples)")
    return 0


def run_evaluate(run_dir, split="test", data_source=None):
    """Evaluates the best model of `run_dir`.

    Args:
        run_dir: a directory written by `fit`.
        split: `train`, `validation` or `test` of the run's own data.
        data_source: a dataset (path or bundled name) to score instead of the run's split.

    Returns:
        A dict with `loss`, `accuracy`, `samples` and what was scored.
    """
    from app.config import load_config
    from app.data import encode_labels, load_arrays
    from app.rundir import (BEST_MODEL_FILE, CONFIG_FILE, check_run_directory, load_run_dataset,
                            read_classes)

    run_dir = check_run_directory(run_dir)
    config = load_config(run_dir / CONFIG_FILE)
    if data_source is None:
        dataset = load_run_dataset(run_dir, config)
        features, labels = dataset.split(split)
        scored = f"{split} split of {dataset.description}"
    else:
        data_config = dataclasses.replace(config.data, source=data_source)
        source = load_arrays(data_config)
        features, scored = source.features, source.description
        labels, _ = encode_labels(source.labels, scored, class_names=read_classes(run_dir))

    import callbacks  # noqa: F401  (registers the project's losses and schedules for loading)
    from app.model_files import load_model_file

    model = load_model_file(run_dir / BEST_MODEL_FILE)
    expected_shape = tuple(model.input_shape[1:])
    if tuple(features.shape[1:]) != expected_shape:
        raise UserError(f"{scored} has samples of shape {tuple(features.shape[1:])} but the "
                        f"model takes {expected_shape}")
    from app.feeding import evaluation_inputs

    loss, accuracy = model.evaluate(**evaluation_inputs(features, labels, config), verbose=0)
    return {"data": scored, "samples": int(len(labels)), "loss": float(loss),
            "accuracy": float(accuracy)}
