"""`python -m app fit`: train, select the best epoch on validation data, test once, write the run.

The order matters: the configuration and the data are checked and the run directory is
planned before Keras starts, so bad input fails fast and leaves nothing behind.

```python
config = load_config(overrides=["training.epochs=5"])
run_dir, metrics = run_fit(config)   # runs/mlp-teacher-<timestamp>/, metrics.json
```
"""

import dataclasses
import json
import math
import time
from pathlib import Path

from app.config import config_hash, dump_config
from app.data import BUNDLED_DATASETS, load_dataset
from app.distribution import start_distribution, stop_distribution
from app.errors import UserError
from app.rundir import StagedRunDirectory, plan_run_directory

CLASS_NAMES_FILE = "classes.json"
# Training samples that `training.noise_scale` estimates the gradient noise scale on.
NOISE_SCALE_SAMPLES = 1024


def run_fit(config):
    """Trains the configured model and writes a complete run directory.

    Args:
        config: a validated `app.config.Config`.

    Returns:
        `(run_dir, metrics)`: the path of the run directory and what `metrics.json` holds.

    Raises:
        UserError: on bad data, a model that cannot take the data, or a run whose monitored
            metric was never finite.
    """
    dataset = load_dataset(config.data, seed=config.seed)
    check_model_fits_data(config.model, dataset)
    name = default_run_name(config)
    run_dir = plan_run_directory(config.output, name)
    config = resolve(config, name)

    with StagedRunDirectory(run_dir) as run:
        lr_finder = None
        if config.schedule.lr == "auto":
            lr_finder = _find_learning_rate(config, dataset, run.staging)
            config = dataclasses.replace(
                config, schedule=dataclasses.replace(config.schedule, lr=lr_finder["suggestion"]))
        (run.staging / "config.yaml").write_text(dump_config(config))
        (run.staging / CLASS_NAMES_FILE).write_text(json.dumps(dataset.class_names) + "\n")
        history, metrics = train_and_test(config, dataset, run.staging)
        if lr_finder is not None:
            metrics["lr_finder"] = lr_finder
        write_reports(run.staging, history, metrics, title=run_dir.name)
        path = run.commit()
    return path, metrics


def train_and_test(config, dataset, staging, teacher=None):
    """Trains the configured model on the configured devices, keeps `staging/best.keras`
    and evaluates it once on the test split.

    Args:
        config: the resolved configuration.
        dataset: the `app.data.Dataset`.
        staging: the folder that receives `best.keras`.
        teacher: a trained model to distil into the configured one (`distill`), or `None`.

    Returns:
        `(history, metrics)`: the per-epoch logs and what `metrics.json` holds.
    """
    import keras

    started = time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    devices = start_distribution(config.distribution)
    try:
        training_data = devices.shardable(dataset, config.training.batch_size)
        with devices.scope():
            model = build_compiled_model(config, training_data, devices)
        trained = model
        if teacher is not None:
            from app.distillation import build_distiller

            trained = build_distiller(teacher, model, config.distillation)
        history, checkpoint, nan_report = train_model(trained, config, training_data, staging,
                                                      kept_model=model)
    finally:
        stop_distribution(devices)
    train_seconds = time.perf_counter() - started
    best_model = _load_best_model(staging / "best.keras", config)
    test_loss, test_accuracy = best_model.evaluate(
        dataset.x_test, dataset.y_test, batch_size=config.training.batch_size, verbose=0
    )
    metrics = _metrics(config, dataset, history, checkpoint, model, train_seconds,
                       time.perf_counter() - started, test_loss, test_accuracy)
    if nan_report is not None:
        metrics["stopped_by_nan_guard"] = nan_report
    metrics["distribution"] = devices.describe()
    return history, metrics


def default_run_name(config):
    """`output.name`, else `<architecture>-<size>`."""
    return config.output.name or f"{config.model.architecture}-{config.model.size}"


def resolve(config, name):
    """The configuration with every default that depends on other keys filled in.

    The result, written to `config.yaml`, repeats the run exactly: the learning rate is
    the optimizer's actual default, the data path is absolute and the run has its name.
    (`schedule.lr: auto` is resolved by `run_fit` once the LR finder has run.)
    """
    from app.optimizers import default_learning_rate

    schedule = config.schedule
    if schedule.lr is None:
        schedule = dataclasses.replace(schedule, lr=default_learning_rate(config.optimizer.name))
    output = dataclasses.replace(config.output, name=name)
    data = config.data
    if data.source not in BUNDLED_DATASETS:
        data = dataclasses.replace(data, source=str(Path(data.source).resolve()))
    return dataclasses.replace(config, schedule=schedule, output=output, data=data)


def build_compiled_model(config, dataset, devices=None):
    """Builds the model, its optimizer and loss from `config`, compiled for `dataset`.

    Args:
        config: the resolved configuration.
        dataset: the `app.data.Dataset` (its shapes, classes and training statistics).
        devices: the `app.distribution.Devices` it trains on (call this in their scope), or
            `None` for one device.
    """
    import keras

    from app.optimizers import build_optimizer, build_schedule
    from callbacks import SparseCategoricalCrossentropy
    from models import build_model

    statistics = {}
    if config.data.normalize:
        statistics = {"mean": dataset.feature_mean, "variance": dataset.feature_variance}
    model_config = config.model
    synchronized = devices is not None and devices.synchronizes_batch_norm
    if synchronized and model_config.normalization == "batch":
        model_config = dataclasses.replace(model_config, normalization="sync_batch")
    model = build_model(model_config, dataset.input_shape, dataset.num_classes, **statistics)
    learning_rate = build_schedule(config.schedule, steps_per_epoch(config, dataset),
                                   config.training.epochs)
    if config.training.label_smoothing:
        loss = SparseCategoricalCrossentropy(
            from_logits=True, label_smoothing=config.training.label_smoothing
        )
    else:
        # Keras's own loss keeps best.keras loadable without importing this project.
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(
        optimizer=build_optimizer(config.optimizer, config.training, learning_rate),
        loss=loss,
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return model


def steps_per_epoch(config, dataset):
    """Optimizer updates per epoch: batches over the accumulation steps, a partial window
    counting as one (with `accumulation_schedule`, those of the first epoch)."""
    training = config.training
    batches = math.ceil(len(dataset.x_train) / training.batch_size)
    first_epoch_steps = dict(training.accumulation_schedule or []).get(
        1, training.accumulation_steps)
    return math.ceil(batches / first_epoch_steps)


def _find_learning_rate(config, dataset, directory):
    from app.lr_find import find_learning_rate, write_lr_find

    finder = find_learning_rate(config, dataset, rule=config.schedule.lr_rule)
    return write_lr_find(finder, directory)


def check_model_fits_data(model_config, dataset):
    if model_config.num_classes is not None and model_config.num_classes != dataset.num_classes:
        raise UserError(
            f"model.num_classes is {model_config.num_classes} but {dataset.description} has "
            f"{dataset.num_classes} classes; set model.num_classes to {dataset.num_classes} or null"
        )
    if model_config.architecture == "cnn" and len(dataset.input_shape) != 3:
        raise UserError(
            f"model.architecture cnn needs images (height, width, channels) but "
            f"{dataset.description} has samples of shape {dataset.input_shape}; use mlp"
        )


def train_model(model, config, dataset, staging, extra_callbacks=(), kept_model=None):
    """Trains a compiled model with the configured callbacks; keeps `staging/best.keras`.

    Args:
        model: a model from `build_compiled_model` (or a distiller around one).
        config: the resolved configuration.
        dataset: the `app.data.Dataset`; its test split is not used.
        staging: the folder that receives `best.keras`.
        extra_callbacks: more callbacks, run after the configured ones (benchmarks use this).
        kept_model: the model that `best.keras` holds when it is not `model` (a
            distiller's student).

    Returns:
        `(history, checkpoint, nan_report)`: the per-epoch logs as lists of floats, the
        `BestModelCheckpoint` that knows the best epoch, and what the NaN guard found if it
        stopped training after a good epoch (else `None`).

    Raises:
        UserError: if the loss became non-finite before any epoch finished.
        KeyboardInterrupt: after a graceful Ctrl-C, so that no run directory is written.
    """
    from callbacks import BestModelCheckpoint

    checkpoint = BestModelCheckpoint(staging / "best.keras", monitor=config.early_stopping.monitor,
                                     mode=config.early_stopping.mode, saved_model=kept_model)
    result, nan_report = fit_configured(model, config, dataset,
                                        callbacks=[checkpoint, *extra_callbacks])
    history = {key: [float(value) for value in values] for key, values in result.history.items()}
    return history, checkpoint, nan_report


def fit_configured(model, config, dataset, callbacks=(), verbose=None, **fit_arguments):
    """`model.fit` on the training split, validated on the validation split, with the
    callbacks that `config` turns on.

    Args:
        model: a model from `build_compiled_model`.
        config: the resolved configuration.
        dataset: the `app.data.Dataset`; its test split is not used.
        callbacks: more callbacks, run after the configured ones (a checkpoint,
            KerasTuner's trial callbacks).
        verbose: Keras's verbosity, else `training.verbose`.
        **fit_arguments: more `model.fit` arguments: `epochs` (else `training.epochs`),
            Hyperband's `initial_epoch`.

    Returns:
        `(history, nan_report)`: Keras's `History` and what the NaN guard found if it
        stopped training after a good epoch (else `None`).

    Raises:
        UserError: if the loss became non-finite before any epoch finished.
        KeyboardInterrupt: after a graceful Ctrl-C.
    """
    from callbacks import EarlyStopping, NaNGuard
    from callbacks.best_model_checkpoint import resolve_mode

    stopping = config.early_stopping
    mode = resolve_mode(stopping.monitor, stopping.mode)
    configured = _optional_callbacks(config, dataset)
    guard = stopper = None
    if config.training.nan_guard:
        guard = NaNGuard(monitor=stopping.monitor, mode=mode, verbose=0)
        configured.append(guard)
    if stopping.enabled:
        # The resolved mode, so that a checkpoint and early stopping agree on the direction.
        stopper = EarlyStopping(**{**_settings(stopping), "mode": mode})
        configured.append(stopper)
    fit_arguments.setdefault("epochs", config.training.epochs)
    result = model.fit(
        dataset.x_train,
        dataset.y_train,
        validation_data=(dataset.x_val, dataset.y_val),
        batch_size=config.training.batch_size,
        callbacks=[*configured, *callbacks],
        verbose=config.training.verbose if verbose is None else verbose,
        **fit_arguments,
    )
    if stopper is not None and stopper.interrupted:
        # The first Ctrl-C stopped training gracefully; a run stays complete or absent.
        raise KeyboardInterrupt
    return result, _nan_report(guard, epochs=len(result.history["loss"]))


def _optional_callbacks(config, dataset):
    """The learning-rate monitor, then plateau reduction, noise scale and accumulation as
    configured (the accumulation scheduler after the noise scale, which it may follow)."""
    from app.optimizers import accumulates
    from callbacks import (AccumulationScheduler, GradientNoiseScale, LearningRateMonitor,
                           ReduceLROnPlateau)

    callbacks = [LearningRateMonitor()]
    training = config.training
    if config.schedule.plateau.enabled:
        callbacks.append(ReduceLROnPlateau(**_settings(config.schedule.plateau),
                                           verbose=int(training.verbose > 0)))
    if training.noise_scale:
        samples = slice(0, NOISE_SCALE_SAMPLES)
        callbacks.append(GradientNoiseScale(
            (dataset.x_train[samples], dataset.y_train[samples]),
            small_batch_size=min(32, training.batch_size)))
    if accumulates(training):
        scheduling = {start - 1: steps for start, steps in training.accumulation_schedule or []}
        callbacks.append(AccumulationScheduler(scheduling, samples_per_epoch=len(dataset.x_train),
                                               adaptive=training.accumulation_adaptive))
    return callbacks


def _settings(section):
    """A config section's keys as keyword arguments of its callback (`enabled` aside)."""
    return {key: value for key, value in dataclasses.asdict(section).items() if key != "enabled"}


def _nan_report(guard, epochs):
    if guard is None or not guard.triggered:
        return None
    report = guard.report
    where = (f"in epoch {epochs}, batch {report['batch'] + 1} (first non-finite gradient: "
             f"layer {report['non_finite_gradient_layer']})")
    if report["restored"] == "initial weights":
        raise UserError(f"training diverged {where} before any epoch finished; lower "
                        "schedule.lr or set training.clip_norm")
    return {**report, "epoch": epochs}


def _load_best_model(path, config):
    import keras

    if not path.exists():
        raise UserError(
            f"{config.early_stopping.monitor} was never finite, so no model was kept; "
            "training diverged: lower schedule.lr or set training.clip_norm"
        )
    return keras.saving.load_model(path)


def _metrics(config, dataset, history, checkpoint, model, train_seconds, wall_seconds,
             test_loss, test_accuracy):
    import keras

    from app.backend import backend_versions

    epoch = checkpoint.best_epoch
    return {
        "best": {
            "epoch": epoch,
            "monitor": checkpoint.monitor,
            "value": checkpoint.best_value,
            "val_loss": history["val_loss"][epoch - 1],
            "val_accuracy": history["val_accuracy"][epoch - 1],
        },
        "test": {"loss": float(test_loss), "accuracy": float(test_accuracy)},
        "baseline": {"majority_class_accuracy": dataset.majority_baseline()},
        "epochs_run": len(history["loss"]),
        "train_seconds": train_seconds,
        "wall_time_seconds": wall_seconds,
        "backend": keras.backend.backend(),
        "versions": backend_versions(),
        "parameters": int(model.count_params()),
        "samples": {"train": len(dataset.y_train), "validation": len(dataset.y_val),
                    "test": len(dataset.y_test)},
        "num_classes": dataset.num_classes,
        "data_fingerprint": dataset.fingerprint,
        "config_hash": config_hash(config),
    }


def write_reports(staging, history, metrics, title):
    """Writes `history.csv`, `metrics.json` and `curves.png` into `staging`."""
    from app.reporting import plot_curves, write_history_csv, write_json

    write_history_csv(history, staging / "history.csv")
    write_json(metrics, staging / "metrics.json")
    plot_curves(history, staging / "curves.png", title=title, best_epoch=metrics["best"]["epoch"])
