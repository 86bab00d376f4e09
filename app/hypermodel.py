"""The app's build and training path as a KerasTuner `HyperModel`, and the tuners that run it.

A trial is exactly a short `fit`: `ConfiguredHyperModel` applies the trial's values of the
`search` section to the configuration, builds the model with the same builders, optimizer
and schedule, and trains it with the same callbacks (early stopping, NaN guard, plateau
reduction, accumulation) on the training split, scored on the validation split. The test
split never reaches a trial: the hypermodel is given a dataset without it.

```python
hypermodel = ConfiguredHyperModel(config, without_test_split(dataset))
tuner = build_tuner(config, hypermodel, directory="runs/search")
tuner.search(verbose=0)
```
"""

import contextlib
import dataclasses
import json
import os
import resource
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

import keras
import keras_tuner

from app.backend import set_random_seed
from app.config import with_values
from app.config.search_space import declare, parse_search_space
from app.errors import UserError
from app.rundir import TUNER_DIR

TRIAL_SUMMARY = "trial_summary.json"  # written into each trial's folder
# A trial's training state while it runs, one file per execution: `<prefix><n>.npz`.
TRIAL_STATE_PREFIX = "training_state-"


class TrialLimitReached(Exception):
    """Raised between trials once a tuner has run its `trial_limit` trials."""


class ConfiguredHyperModel(keras_tuner.HyperModel):
    """Builds and trains the model that `config` describes, with a trial's `search` values.

    Args:
        config: the resolved search configuration; `config.search` is the space.
        dataset: an `app.data.Dataset` whose test split has been removed
            (`without_test_split`).
        devices: the `app.distribution.Devices` trials train on, or `None`.

    Example:

    ```python
    hypermodel = ConfiguredHyperModel(config, without_test_split(dataset))
    tuner = keras_tuner.RandomSearch(hypermodel, objective="val_loss", max_trials=5)
    tuner.search()   # the data comes from the hypermodel
    ```
    """

    def __init__(self, config, dataset, devices=None):
        super().__init__(name=config.output.name)
        if dataset.x_test is not None:
            raise ValueError("give the hypermodel a dataset without its test split "
                             "(without_test_split): a search must not see test data")
        self.config = config
        self.dataset = dataset
        self.devices = devices
        self.dimensions = parse_search_space(config.search)
        self.trial_dir = None  # where the trial in progress keeps its training states
        self._trial_fits = 0

    def start_trial(self, trial_dir):
        """The trial's `fit`s save their training state in `trial_dir`: an interrupted
        trial, which KerasTuner runs again when the search resumes, resumes from its last
        epoch (or batch) instead of from the start (KerasTuner #702)."""
        self.trial_dir, self._trial_fits = Path(trial_dir), 0

    def end_trial(self):
        """Removes the finished trial's training states."""
        for path in self.trial_dir.glob(f"{TRIAL_STATE_PREFIX}*.npz"):
            path.unlink()
        self.trial_dir = None

    def declare_hyperparameters(self, hp):
        # The space is known without building a model.
        declare(hp, self.dimensions)

    def trial_config(self, hp):
        """The configuration with the trial's values; a failed trial if they do not combine."""
        values = declare(hp, self.dimensions)
        try:
            return with_values(self.config, values)
        except UserError as error:
            raise keras_tuner.errors.FailedTrialError(f"invalid combination: {error}") from None

    def training_data(self, config):
        """The dataset, split evenly over the devices for the trial's batch size."""
        if self.devices is None:
            return self.dataset
        try:
            return self.devices.shardable(self.dataset, config.training.batch_size)
        except UserError as error:
            raise keras_tuner.errors.FailedTrialError(str(error)) from None

    def build(self, hp):
        from app.engine import build_compiled_model

        config = self.trial_config(hp)
        # Every trial starts from the same seed: differences come from the values, not luck.
        set_random_seed(config.seed)
        with self._on_devices():
            return build_compiled_model(config, self.training_data(config), self.devices)

    def fit(self, hp, model, *args, callbacks=(), **fit_arguments):
        """Trains like `fit` does; KerasTuner's callbacks run after the configured ones.

        `fit_arguments` may hold Hyperband's `epochs` and `initial_epoch`, and the
        `verbose` given to `search` (trials train silently: the tuner prints a line each).
        """
        from app.engine import fit_configured

        fit_arguments.pop("verbose", None)
        config = self.trial_config(hp)
        dataset = self.training_data(config)
        try:
            with self._on_devices():
                history, _ = fit_configured(model, config, dataset, callbacks=list(callbacks),
                                            verbose=0,
                                            checkpoint=self._checkpoint(config, dataset),
                                            **fit_arguments)
        except UserError as error:
            raise keras_tuner.errors.FailedTrialError(str(error)) from None
        return history

    def _on_devices(self):
        # KerasTuner clears the session, and with it JAX's distribution, before each build.
        return contextlib.nullcontext() if self.devices is None else self.devices.scope()

    def _checkpoint(self, config, dataset):
        """The training checkpoint of this `fit` of the trial (one per execution)."""
        from app.engine import training_checkpoint

        if self.trial_dir is None:
            return None
        self._trial_fits += 1
        path = self.trial_dir / f"{TRIAL_STATE_PREFIX}{self._trial_fits}.npz"
        return training_checkpoint(config, dataset, path, resume=path.is_file())


def without_test_split(dataset):
    """`dataset` with its test arrays removed, for searches."""
    return dataclasses.replace(dataset, x_test=None, y_test=None)


class TrialReporting:
    """Mixin for KerasTuner tuners: a progress line per trial, a `trial_summary.json` in
    each trial's folder (epochs, seconds, resident memory), an optional trial limit, and
    Ctrl-C held back while KerasTuner writes its state, so that `--resume` can read it.

    Attributes:
        trial_limit: stop `search` (raising `TrialLimitReached`) after this many trials in
            this process, or `None`.
    """

    trial_limit = None
    _trials_run = 0
    _interrupt_pending = False
    _holding = False

    def search(self, *args, **kwargs):
        from keras_tuner.src import config as tuner_config

        # KerasTuner prints every failed trial's traceback; the progress line shows its
        # reason and the trial's trial.json keeps the traceback.
        debug, tuner_config.DEBUG = tuner_config.DEBUG, False
        previous = self._catch_interrupts()
        try:
            return super().search(*args, **kwargs)
        finally:
            tuner_config.DEBUG = debug
            self._holding = self._interrupt_pending = False
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

    def run_trial(self, trial, *args, **kwargs):
        started = time.perf_counter()
        self.hypermodel.start_trial(self.get_trial_dir(trial.trial_id))
        try:
            histories = super().run_trial(trial, *args, **kwargs)
        except Exception:  # a failed trial; an interrupted one keeps its state to resume
            self.hypermodel.end_trial()
            raise
        self.hypermodel.end_trial()
        summary = {
            "epochs": len(histories[-1].history["loss"]),
            "seconds": round(time.perf_counter() - started, 3),
            "memory_mb": round(resident_memory_mb(), 1),
        }
        path = os.path.join(self.get_trial_dir(trial.trial_id), TRIAL_SUMMARY)
        with open(path, "w") as handle:
            json.dump(summary, handle)
        return histories

    def pre_create_trial(self):
        super().pre_create_trial()
        if self.trial_limit is not None and self._trials_run >= self.trial_limit:
            raise TrialLimitReached
        self._hold_interrupts()  # the oracle writes the new trial

    def on_trial_begin(self, trial):
        self._release_interrupts()
        super().on_trial_begin(trial)

    def on_trial_end(self, trial):
        self._hold_interrupts()  # the oracle writes the result
        super().on_trial_end(trial)
        self._trials_run += 1
        print(self._progress_line(trial), flush=True)
        if keras.backend.backend() == "jax":
            import jax

            # Each trial's shapes compile anew, and JAX would keep every compiled program.
            jax.clear_caches()
        self._release_interrupts()

    def _catch_interrupts(self):
        """Takes Ctrl-C for the search (from the main thread, when nobody else has); returns
        the handler to put back, or `None`."""
        if (threading.current_thread() is not threading.main_thread()
                or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
            return None
        return signal.signal(signal.SIGINT, self._on_interrupt)

    def _on_interrupt(self, signum, frame):
        # Noted, so that the next trial boundary raises it if it is held now, or if the
        # KeyboardInterrupt raised here lands in a callback that swallows it (a garbage
        # collection callback does: "Exception ignored in ...").
        self._interrupt_pending = True
        if not self._holding:
            raise KeyboardInterrupt

    def _hold_interrupts(self):
        self._holding = True

    def _release_interrupts(self):
        self._holding = False
        if self._interrupt_pending:
            self._interrupt_pending = False
            raise KeyboardInterrupt

    def _progress_line(self, trial):
        ended = self.oracle.get_trial(trial.trial_id)
        total = getattr(self.oracle, "max_trials", None)
        number = f"trial {int(trial.trial_id) + 1}" + (f"/{total}" if total else "")
        objective = self.oracle.objective.name
        if ended.status == "COMPLETED":
            outcome = f"{objective} {ended.score:.4f}"
        else:
            outcome = f"{ended.status.lower()}: {last_line(ended.message)}"
        best = [trial for trial in self.oracle.get_best_trials(1) if trial.score is not None]
        best_text = (f"  best {best[0].score:.4f} (trial {int(best[0].trial_id) + 1})"
                     if best else "")
        summary = read_trial_summary(self.get_trial_dir(trial.trial_id))
        cost = (f"  {summary['epochs']} epochs {summary['seconds']:.1f} s"
                if summary else "")
        values = "  ".join(f"{key}={format_value(value)}"
                           for key, value in ended.hyperparameters.values.items()
                           if not key.startswith("tuner/"))
        return f"{number}  {outcome}{best_text}{cost}  {values}"


class RandomSearch(TrialReporting, keras_tuner.RandomSearch):
    """`keras_tuner.RandomSearch` with the app's trial reporting."""


class Hyperband(TrialReporting, keras_tuner.Hyperband):
    """`keras_tuner.Hyperband` with the app's trial reporting."""

    def _build_hypermodel(self, hp):
        with warnings.catch_warnings():
            # A promoted trial continues from its weights with a fresh optimizer, by design.
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            return super()._build_hypermodel(hp)


class BayesianOptimization(TrialReporting, keras_tuner.BayesianOptimization):
    """`keras_tuner.BayesianOptimization` with the app's trial reporting."""

    def search(self, *args, **kwargs):
        with warnings.catch_warnings():
            # The Gaussian process warns whenever a length scale reaches its bound, which
            # is routine with few trials and says nothing about the search.
            warnings.filterwarnings("ignore", module="sklearn.gaussian_process")
            return super().search(*args, **kwargs)


TUNER_CLASSES = {"random": RandomSearch, "hyperband": Hyperband,
                 "bayesian": BayesianOptimization}


def build_tuner(config, hypermodel, directory, devices=None, trial_limit=None):
    """The configured KerasTuner tuner over `hypermodel`, reloading a search in `directory`.

    Args:
        config: the resolved search configuration (`tuning` section).
        hypermodel: a `ConfiguredHyperModel`.
        directory: the search directory; KerasTuner's state goes to `directory/tuner`.
        devices: the `app.distribution.Devices`; a TensorFlow strategy becomes the tuner's
            `distribution_strategy`.
        trial_limit: run at most this many trials in this process (`None`: no limit).
    """
    from callbacks.monitor_mode import resolve_mode

    tuning = config.tuning
    objective = keras_tuner.Objective(tuning.objective,
                                      direction=resolve_mode(tuning.objective, "auto"))
    arguments = {
        "objective": objective,
        "seed": config.seed,
        "executions_per_trial": tuning.executions_per_trial,
        "max_consecutive_failed_trials": tuning.max_consecutive_failed_trials,
        "distribution_strategy": devices.tf_strategy if devices is not None else None,
        "directory": str(directory),
        "project_name": TUNER_DIR,
        "overwrite": False,
    }
    if tuning.tuner == "hyperband":
        arguments.update(max_epochs=config.training.epochs, factor=tuning.hyperband_factor)
    else:
        arguments["max_trials"] = tuning.max_trials
    tuner = TUNER_CLASSES[tuning.tuner](hypermodel, **arguments)
    tuner.trial_limit = trial_limit
    return tuner


def read_trial_summary(trial_dir):
    path = os.path.join(trial_dir, TRIAL_SUMMARY)
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        return json.load(handle)


def resident_memory_mb():
    """This process's resident memory now (Linux), else its peak."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def last_line(message):
    """The last non-empty line of a trial's error message (a traceback), without the
    name of KerasTuner's `FailedTrialError`, whose text is the reason."""
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    if not lines:
        return "no message"
    return lines[-1].removeprefix("keras_tuner.src.errors.FailedTrialError: ")


def format_value(value):
    return f"{value:.3g}" if isinstance(value, float) else str(value)
