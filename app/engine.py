"""The training engine: build, compile, train and test a configured model.

It knows no command line and no file layout: callers (the commands, `tune`'s trials, the
benchmarks) give it a configuration, a dataset and the path where the best epoch's model
goes, and get back the history and the metrics.

```python
config = resolve_config(load_config(overrides=["training.epochs=5"]), "mlp-teacher")
dataset = load_dataset(config.data, seed=config.seed)
history, metrics = train_and_test(config, dataset, Path("best.keras"))
```
"""

import dataclasses
import math
import sys
import time
from pathlib import Path

from app.backend import set_random_seed
from app.config import config_hash
from app.data import BUNDLED_DATASETS, report_warnings
from app.distribution import start_distribution, stop_distribution
from app.errors import Terminated, UserError
from app.execution import compile_model, precision_policy
from app.tables.architectures import ARCHITECTURES

# Training samples that `training.noise_scale` estimates the gradient noise scale on.
NOISE_SCALE_SAMPLES = 1024
# The share of training time that saving the training state at epochs' ends may take: on
# epochs of milliseconds (digits) it saves every few epochs, on real ones at every epoch. 1 %
# of the callback stack's 5 % (`bench/callback_overhead.py`); a `kill -9` on digits then
# loses at most about 0.3 s of training.
CHECKPOINT_TIME_BUDGET = 0.01


def train_and_test(config, dataset, checkpoint_path, teacher_path=None, state_path=None,
                   resume=False, start=None):
    """Trains the configured model on the configured devices, keeps the best epoch's model
    at `checkpoint_path` and evaluates it once on the test split.

    Args:
        config: the resolved configuration.
        dataset: the `app.data.Dataset`.
        checkpoint_path: where the best epoch's model is saved (a `.keras` path).
        teacher_path: the `.keras` file of a trained model to distil into the configured one
            (`distill`), or `None`. It is loaded on the configured devices.
        state_path: where the training state is saved (`app.resuming`), so that an
            interrupted run can resume; `None` saves none.
        resume: continue from the state at `state_path` (`fit --resume`).
        start: `start(model)` sets the built model's weights before training (`prune`
            rewinds them), or `None` to train from the seeded initialization.

    Returns:
        `(history, metrics)`: the per-epoch logs and what `metrics.json` holds.
    """
    from app.feeding import evaluation_inputs

    for line in report_warnings(dataset):
        print(line, file=sys.stderr)
    started = time.perf_counter()
    set_random_seed(config.seed)
    devices = start_distribution(config.distribution,
                                 variables=lambda: variable_shapes(config, dataset))
    try:
        training_data = devices.shardable(dataset, config.training.batch_size)
        with devices.scope():
            model = build_compiled_model(config, training_data, devices)
            if start is not None:
                start(model)
            trained = model
            if teacher_path is not None:
                trained = _distiller(teacher_path, model, config)
        if config.training.verbose:
            shapes = {variable.path: tuple(variable.shape) for variable in model.weights}
            for line in devices.sharding_lines(shapes):
                print(line)
        state = None
        if state_path is not None:
            state = training_checkpoint(config, dataset, state_path, resume)
        history, checkpoint, nan_report = train_model(trained, config, training_data,
                                                      checkpoint_path, kept_model=model,
                                                      state=state)
    finally:
        stop_distribution(devices)
    train_seconds = time.perf_counter() - started
    best_model = _load_best_model(Path(checkpoint_path), config)
    test_loss, test_accuracy = best_model.evaluate(
        **evaluation_inputs(dataset.x_test, dataset.y_test, config), verbose=0)
    metrics = _metrics(config, dataset, history, checkpoint, model, train_seconds,
                       time.perf_counter() - started, test_loss, test_accuracy)
    if config.training.pruning.enabled:
        from callbacks import model_sparsity

        metrics["sparsity"] = model_sparsity(best_model)
    if nan_report is not None:
        metrics["stopped_by_nan_guard"] = nan_report
    metrics["distribution"] = devices.describe()
    return history, metrics


def _distiller(teacher_path, student, config):
    """The compiled `Distiller` of the teacher in `teacher_path` and `student`, built in the
    devices' scope so that the teacher's weights are placed like the student's."""
    from app.distillation import build_distiller
    from app.model_files import load_model_file

    teacher = load_model_file(teacher_path, compile=False)
    return build_distiller(teacher, student, config.distillation,
                           metrics=[accuracy_metric(config)])


def training_checkpoint(config, dataset, state_path, resume):
    """An `app.resuming.TrainingCheckpoint` saving to `state_path`; with `resume`, it
    continues from the state there (refused if the backend, configuration or data differ).
    """
    import keras

    from app.resuming import TrainingCheckpoint, load_training_state

    identity = {"backend": keras.backend.backend(), "config_hash": config_hash(config),
                "data_fingerprint": dataset.fingerprint}
    return TrainingCheckpoint(state_path, identity=identity,
                              resume_from=load_training_state(state_path) if resume else None,
                              every_minutes=config.training.checkpoint_minutes,
                              time_budget=CHECKPOINT_TIME_BUDGET)


def resolve_config(config, name):
    """The configuration with every default that depends on other keys filled in.

    The result, written to `config.yaml`, repeats the run exactly: the learning rate is
    the optimizer's actual default, the data path is absolute and the run has its name.
    (`schedule.lr: auto` is resolved by `fit` once the LR finder has run.)
    """
    from app.tables.optimizers import default_learning_rate

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

    from app.tables.optimizers import build_optimizer
    from app.tables.schedules import build_schedule

    model = build_configured_model(config, dataset, devices)
    if config.training.fine_tune.enabled:
        from models.backbones import set_backbone_trainable

        set_backbone_trainable(model, blocks=0)
    learning_rate = build_schedule(config.schedule, steps_per_epoch(config, dataset),
                                   config.training.epochs)
    compile_model(model, config, keras.backend.backend(),
                  optimizer=build_optimizer(config.optimizer, config.training, learning_rate),
                  loss=training_loss(config), metrics=[accuracy_metric(config)])
    return model


def build_configured_model(config, dataset, devices=None):
    """The configured model, uncompiled, in the configured precision (arguments as for
    `build_compiled_model`)."""
    from app.tables.architectures import build_model

    statistics = {}
    if config.data.normalize:
        statistics = {"mean": dataset.feature_mean, "variance": dataset.feature_variance}
    model_config = config.model
    synchronized = devices is not None and devices.synchronizes_batch_norm
    if synchronized and model_config.normalization == "batch":
        model_config = dataclasses.replace(model_config, normalization="sync_batch")
    with precision_policy(config.training.precision):
        return build_model(model_config, dataset.input_shape, dataset.num_classes, **statistics)


def variable_shapes(config, dataset):
    """`{path: shape}` of the configured model's variables, from a build on no devices (the
    app's layers are named, so every build has the same paths): what `model-parallel` lays
    out before the model is built on the mesh."""
    model = build_configured_model(config, dataset)
    return {variable.path: tuple(variable.shape) for variable in model.weights}


def training_loss(config):
    """Cross-entropy on logits: Keras's own unless label smoothing or soft targets (MixUp,
    CutMix) need the project's, which takes integer labels and soft targets alike."""
    import keras

    from callbacks import SparseCategoricalCrossentropy

    smoothing = config.training.label_smoothing
    if smoothing or config.augmentation.mixes:
        return SparseCategoricalCrossentropy(from_logits=True, label_smoothing=smoothing)
    # Keras's own loss keeps best.keras loadable without importing this project.
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def accuracy_metric(config):
    """The `accuracy` metric; with soft targets, against their most probable class."""
    import keras

    from callbacks import SoftTargetAccuracy

    if config.augmentation.mixes:
        return SoftTargetAccuracy(name="accuracy")
    return keras.metrics.SparseCategoricalAccuracy(name="accuracy")


def steps_per_epoch(config, dataset):
    """Optimizer updates per epoch: batches over the accumulation steps, a partial window
    counting as one (with `accumulation_schedule`, those of the first epoch)."""
    training = config.training
    batches = math.ceil(len(dataset.x_train) / training.batch_size)
    first_epoch_steps = dict(training.accumulation_schedule or []).get(
        1, training.accumulation_steps)
    return math.ceil(batches / first_epoch_steps)


def check_model_fits_data(model_config, dataset):
    """Refuses a model that cannot take the data: the wrong number of classes or of axes.

    Raises:
        UserError: naming the key to change.
    """
    if model_config.num_classes is not None and model_config.num_classes != dataset.num_classes:
        raise UserError(
            f"model.num_classes is {model_config.num_classes} but {dataset.description} has "
            f"{dataset.num_classes} classes; set model.num_classes to {dataset.num_classes} or null"
        )
    rank = ARCHITECTURES.row(model_config.architecture).input_rank
    if rank is not None and len(dataset.input_shape) != rank:
        raise UserError(
            f"model.architecture {model_config.architecture} needs images (height, width, "
            f"channels) but {dataset.description} has samples of shape {dataset.input_shape}; "
            f"use mlp"
        )


def train_model(model, config, dataset, checkpoint_path, extra_callbacks=(), kept_model=None,
                state=None):
    """Trains a compiled model with the configured callbacks; keeps the best epoch's model.

    Args:
        model: a model from `build_compiled_model` (or a distiller around one).
        config: the resolved configuration.
        dataset: the `app.data.Dataset`; its test split is not used.
        checkpoint_path: where the best epoch's model is saved (a `.keras` path) when
            training ends; until then it is kept in memory, and in the training state.
        extra_callbacks: more callbacks, run after the configured ones (benchmarks use this).
        kept_model: the model that `best.keras` holds when it is not `model` (a
            distiller's student).
        state: an `app.resuming.TrainingCheckpoint` that saves (and may restore) the
            training state, or `None`.

    Returns:
        `(history, checkpoint, nan_report)`: the per-epoch logs as lists of floats, the
        `BestModelCheckpoint` that knows the best epoch, and what the NaN guard found if it
        stopped training after a good epoch (else `None`).

    Raises:
        UserError: if the loss became non-finite before any epoch finished.
        KeyboardInterrupt: after a graceful Ctrl-C, so that no run directory is written.
    """
    from callbacks import BestModelCheckpoint

    checkpoint = BestModelCheckpoint(checkpoint_path, monitor=config.early_stopping.monitor,
                                     mode=config.early_stopping.mode, saved_model=kept_model,
                                     start_from_epoch=first_counted_epoch(config),
                                     defer_writing=True)
    result, nan_report = fit_configured(model, config, dataset,
                                        callbacks=[checkpoint, *extra_callbacks],
                                        checkpoint=state)
    history = {key: [float(value) for value in values] for key, values in result.history.items()}
    return history, checkpoint, nan_report


def fit_configured(model, config, dataset, callbacks=(), verbose=None, checkpoint=None,
                   **fit_arguments):
    """`model.fit` on the training split, validated on the validation split, with the
    callbacks that `config` turns on (and `augmentation` on the training batches).

    With `training.fine_tune.epochs`, a second `fit` follows the first: the top blocks of the
    body unfrozen, a fresh optimizer at `lr_factor` × the rate, epochs numbered on and the
    same callbacks (the checkpoint keeps its best; early stopping watches each phase).

    Args:
        model: a model from `build_compiled_model`.
        config: the resolved configuration.
        dataset: the `app.data.Dataset`; its test split is not used.
        callbacks: more callbacks, run after the configured ones (a checkpoint,
            KerasTuner's trial callbacks).
        verbose: Keras's verbosity, else `training.verbose`.
        checkpoint: an `app.resuming.TrainingCheckpoint` that saves the training state (it
            then takes the stopping signals) and, with `resume_from`, continues a run.
        **fit_arguments: more `model.fit` arguments: `epochs` (else `training.epochs`),
            Hyperband's `initial_epoch`.

    Returns:
        `(history, nan_report)`: Keras's `History`, holding every epoch of the run, and what
        the NaN guard found if it stopped training after a good epoch (else `None`).

    Raises:
        UserError: if the loss became non-finite before any epoch finished.
        KeyboardInterrupt: after a graceful Ctrl-C (`app.errors.Terminated`: SIGTERM).
    """
    from app.lockstep import lockstep_callbacks
    from callbacks import EarlyStopping, NaNGuard

    stopping = config.early_stopping
    lockstep = lockstep_callbacks()  # several processes: Keras waits for every call
    configured = [*lockstep, *_optional_callbacks(config, dataset)]
    guard = stopper = None
    if config.training.nan_guard:
        # `exact` waits for every call's loss, to stop at once and name the layer; so does
        # the guard wherever Keras waits anyway.
        guard = NaNGuard(monitor=stopping.monitor, mode=stopping.mode, verbose=0,
                         asynchronous=config.training.nan_guard != "exact" and not lockstep)
        configured.append(guard)
    if stopping.enabled:
        # A checkpoint takes the signals itself, to save the state before stopping.
        signals = () if checkpoint is not None else ("SIGINT", "SIGTERM")
        settings = {**_settings(stopping), "start_from_epoch": max(
            stopping.start_from_epoch, first_counted_epoch(config))}
        stopper = EarlyStopping(**settings, graceful_signals=signals)
        configured.append(stopper)
    configured.extend(callbacks)
    if checkpoint is not None:
        checkpoint.tracked = [callback for callback in configured
                              if hasattr(callback, "state_dict")]
        configured.append(checkpoint)
    loop = _Loop(model, config, dataset, configured,
                 config.training.verbose if verbose is None else verbose, checkpoint, stopper)
    resumed = checkpoint.resume_from if checkpoint is not None else None
    epochs = fit_arguments.pop("epochs", config.training.epochs)
    fine_tune = config.training.fine_tune
    # Hyperband resumes trials with `initial_epoch`: its trials train phase one only.
    phase_two = fine_tune.enabled and fine_tune.epochs > 0 and "initial_epoch" not in fit_arguments
    if resumed is None:
        loop.run(fit_arguments.pop("initial_epoch", 0), epochs, **fit_arguments)
    elif resumed.phase == 1:
        loop.resume(resumed, epochs)
    resumed_in_phase_two = resumed is not None and resumed.phase == 2
    phase_two_start = resumed.phase_start if resumed_in_phase_two else None
    interrupted = stopper is not None and stopper.interrupted
    if phase_two and phase_two_start is None and not (interrupted or (guard and guard.triggered)):
        phase_two_start = len(loop.history.history["loss"])
        if checkpoint is not None:
            checkpoint.phase, checkpoint.phase_start = 2, phase_two_start
    if phase_two_start is not None:
        loop.start_phase_two()
        end = phase_two_start + fine_tune.epochs
        if resumed_in_phase_two:
            loop.resume(resumed, end)
        else:
            loop.run(phase_two_start, end)
    if interrupted:
        # The first Ctrl-C or SIGTERM stopped training gracefully; a run stays complete or
        # absent.
        raise Terminated if stopper.interrupt_signal == "SIGTERM" else KeyboardInterrupt
    history = loop.history
    if checkpoint is not None:
        history.history = checkpoint.history
    return history, _nan_report(guard, epochs=len(history.history["loss"]))


class _Loop:
    """The `model.fit` calls of a run: all of its epochs in one call, or, resumed within an
    epoch, the rest of that epoch and then the others, seen by the callbacks as one."""

    def __init__(self, model, config, dataset, callbacks, verbose, checkpoint=None,
                 stopper=None):
        self.model, self.config, self.dataset = model, config, dataset
        self.callbacks, self.verbose = callbacks, verbose
        # Among the callbacks, if configured: the `TrainingCheckpoint` and `EarlyStopping`.
        self.checkpoint, self.stopper = checkpoint, stopper
        self.augmenter = None
        if config.augmentation.enabled:
            from app.augmentation import build_augmenter

            self.augmenter = build_augmenter(config.augmentation, dataset, config.seed)
        self.history = None  # Keras's `History`, of every `fit` so far
        self._built = False  # the compiled loss and metrics

    def start_phase_two(self):
        """Fine-tuning's second phase: unfreezes the top blocks and compiles anew."""
        _unfreeze_and_recompile(self.model, self.config, self.dataset)
        self._built = False

    def run(self, initial_epoch, epochs, first_batch=0, callbacks=None, **fit_arguments):
        from app.feeding import fit_inputs

        if not self._built:
            self._build_loss_and_metrics()
            self._built = True
        inputs = fit_inputs(self.dataset, self.config, self.augmenter, initial_epoch, first_batch)
        data_callbacks = inputs.pop("callbacks", [])
        try:
            result = self.model.fit(
                **inputs, callbacks=[*data_callbacks, *(callbacks or self.callbacks)],
                verbose=self.verbose, initial_epoch=initial_epoch, epochs=epochs, **fit_arguments)
        except BaseException:
            # No `on_train_end` ran: no signal handler stays behind, nor a state being
            # written into a folder that the caller may remove.
            if self.stopper is not None:
                self.stopper.release_signals()
            if self.checkpoint is not None:
                self.checkpoint.close()
            raise
        if self.history is None:
            self.history = result
        else:
            for key, values in result.history.items():
                self.history.history.setdefault(key, []).extend(values)

    def _build_loss_and_metrics(self):
        """Builds the compiled loss and metrics on a batch of training samples.

        Left to `fit`, Keras (3.15, JAX and PyTorch) builds them on a batch it reads ahead of
        the first epoch; with `Batches`' worker threads, the batches prefetched with it stay
        queued and open that epoch, so it trains on some batches twice and skips others,
        and a resumed run would not see the batches the uninterrupted one saw.
        """
        import numpy as np

        # One batch: its size divides over the devices, which a data-parallel step needs.
        rows = np.arange(min(self.config.training.batch_size, len(self.dataset.y_train)))
        features = np.asarray(self.dataset.x_train[rows], dtype=np.float32)
        self.model.evaluate(features, self.dataset.y_train[rows], verbose=0)

    def resume(self, state, epochs):
        """Continues from `state` (restored by the checkpoint among the callbacks) up to
        `epochs`; with `state.stopped`, only ends training (restoring the best weights)."""
        if state.stopped or not state.batch:
            self.run(state.epoch, state.epoch if state.stopped else epochs)
            return
        from app.resuming import WithoutHook

        self.run(state.epoch, state.epoch + 1, first_batch=state.batch,
                 callbacks=[WithoutHook(callback, "on_train_end") for callback in self.callbacks])
        # The callbacks' training continues: no second `on_train_begin`.
        rest = state.epoch + 1 if self.model.stop_training else epochs
        self.run(state.epoch + 1, rest, callbacks=[WithoutHook(callback, "on_train_begin")
                                                   for callback in self.callbacks])


def _unfreeze_and_recompile(model, config, dataset):
    """Fine-tuning's second phase: the top blocks of the body train, at `lr_factor` × the
    rate, under the configured schedule over the phase's own epochs (a fresh optimizer)."""
    import keras

    from app.tables.architectures import APPLICATIONS
    from app.tables.optimizers import build_optimizer
    from app.tables.schedules import build_schedule
    from models.backbones import set_backbone_trainable

    fine_tune = config.training.fine_tune
    architecture = config.model.architecture
    set_backbone_trainable(model, fine_tune.unfreeze,
                           architecture if architecture in APPLICATIONS else None)
    schedule = config.schedule
    scaled = dataclasses.replace(schedule, lr=schedule.lr * fine_tune.lr_factor,
                                 min_lr=None if schedule.min_lr is None
                                 else schedule.min_lr * fine_tune.lr_factor)
    learning_rate = build_schedule(scaled, steps_per_epoch(config, dataset), fine_tune.epochs)
    compile_model(model, config, keras.backend.backend(),
                  optimizer=build_optimizer(config.optimizer, config.training, learning_rate),
                  loss=training_loss(config), metrics=[accuracy_metric(config)])


def _optional_callbacks(config, dataset):
    """The learning-rate monitor, then plateau reduction, noise scale and accumulation as
    configured (the accumulation scheduler after the noise scale, which it may follow)."""
    from app.tables.optimizers import accumulates
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
    if training.pruning.enabled:
        callbacks.append(magnitude_pruning(training.pruning, steps_per_epoch(config, dataset),
                                           training.epochs))
    if accumulates(training):
        scheduling = {start - 1: steps for start, steps in training.accumulation_schedule or []}
        callbacks.append(AccumulationScheduler(scheduling, samples_per_epoch=len(dataset.x_train),
                                               adaptive=training.accumulation_adaptive))
    return callbacks


def magnitude_pruning(pruning, steps, epochs):
    """The `callbacks.MagnitudePruning` of a `training.pruning` section, its epochs in steps."""
    from callbacks import MagnitudePruning

    begin, end = pruning.epochs(epochs)
    return MagnitudePruning(
        final_sparsity=None if pruning.n_of_m else pruning.sparsity,
        initial_sparsity=pruning.initial_sparsity, begin_step=begin * steps,
        end_step=end * steps - 1, frequency=pruning.frequency, scope=pruning.scope,
        block_size=pruning.block_size, n_of_m=pruning.n_of_m)


def first_counted_epoch(config):
    """The first epoch (0-based) that may be the best one: pruning's end epoch when the
    configuration prunes, as the epochs before it are denser than the result."""
    pruning = config.training.pruning
    return pruning.epochs(config.training.epochs)[1] - 1 if pruning.enabled else 0


def _settings(section):
    """A config section's keys as keyword arguments of its callback (`enabled` aside)."""
    return {key: value for key, value in dataclasses.asdict(section).items() if key != "enabled"}


def _nan_report(guard, epochs):
    if guard is None or not guard.triggered:
        return None
    report = guard.report
    layer = report["non_finite_gradient_layer"]
    where = f"in epoch {epochs}, batch {report['batch'] + 1} " + (
        f"(first non-finite gradient: layer {layer})" if layer or not report["batches_after"]
        else "(training.nan_guard=exact names the first layer with a non-finite gradient)")
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
        "execution": {"precision": config.training.precision,
                      "steps_per_execution": model.steps_per_execution,
                      "jit_compile": model.jit_compile},
        "samples": {"train": len(dataset.y_train), "validation": len(dataset.y_val),
                    "test": len(dataset.y_test)},
        "num_classes": dataset.num_classes,
        "data_fingerprint": dataset.fingerprint,
        "data_report": dataset.report,
        "config_hash": config_hash(config),
    }
