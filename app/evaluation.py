"""`python -m app evaluate RUN_DIR`: score a finished run's `best.keras` again.

By default it rebuilds the run's own split from `config.yaml` (the same seed gives the same
split) and reports the test split, which reproduces `metrics.json`; `--split` picks another
split and `--data` scores a different dataset with the model's classes.
"""

import dataclasses
import json
from pathlib import Path

from app.config import load_config
from app.data import encode_labels, load_arrays, load_dataset
from app.errors import UserError
from app.training import CLASS_NAMES_FILE

REQUIRED_FILES = ("config.yaml", "best.keras", CLASS_NAMES_FILE, "metrics.json")


def run_evaluate(run_dir, split="test", data_source=None):
    """Evaluates the best model of `run_dir`.

    Args:
        run_dir: a directory written by `fit`.
        split: `train`, `validation` or `test` of the run's own data.
        data_source: a dataset (path or bundled name) to score instead of the run's split.

    Returns:
        A dict with `loss`, `accuracy`, `samples` and what was scored.
    """
    run_dir = check_run_directory(run_dir)
    config = load_config(run_dir / "config.yaml")
    class_names = json.loads((run_dir / CLASS_NAMES_FILE).read_text())
    if data_source is None:
        features, labels, scored = _run_split(run_dir, config, split)
    else:
        data_config = dataclasses.replace(config.data, source=data_source)
        features, raw_labels, scored = load_arrays(data_config)
        labels, _ = encode_labels(raw_labels, scored, class_names=class_names)

    import keras

    import callbacks  # noqa: F401  (registers the project's losses and schedules for loading)

    model = keras.saving.load_model(run_dir / "best.keras")
    expected_shape = tuple(model.input_shape[1:])
    if tuple(features.shape[1:]) != expected_shape:
        raise UserError(f"{scored} has samples of shape {tuple(features.shape[1:])} but the "
                        f"model takes {expected_shape}")
    loss, accuracy = model.evaluate(features, labels, batch_size=config.training.batch_size,
                                    verbose=0)
    return {"data": scored, "samples": int(len(labels)), "loss": float(loss),
            "accuracy": float(accuracy)}


def check_run_directory(run_dir):
    """`run_dir` as a `Path`, checked to hold what `fit` writes.

    Raises:
        UserError: naming the missing files.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a directory; pass a run directory written by fit")
    missing = [name for name in REQUIRED_FILES if not (run_dir / name).is_file()]
    if missing:
        raise UserError(f"{run_dir} is not a run directory of `fit` (missing {', '.join(missing)})")
    return run_dir


def load_run_dataset(run_dir, config, remedy="use --data to score it anyway"):
    """The run's own dataset and splits, checked to be the data it was trained on.

    Raises:
        UserError: if the data changed since the run (its fingerprint differs); the
            message ends with `remedy`.
    """
    dataset = load_dataset(config.data, seed=config.seed)
    recorded = json.loads((run_dir / "metrics.json").read_text()).get("data_fingerprint")
    if recorded and recorded != dataset.fingerprint:
        raise UserError(f"{dataset.description} has changed since {run_dir} was trained; "
                        f"its splits are not the run's splits ({remedy})")
    return dataset


def _run_split(run_dir, config, split):
    dataset = load_run_dataset(run_dir, config)
    arrays = {
        "train": (dataset.x_train, dataset.y_train),
        "validation": (dataset.x_val, dataset.y_val),
        "test": (dataset.x_test, dataset.y_test),
    }
    features, labels = arrays[split]
    return features, labels, f"{split} split of {dataset.description}"
