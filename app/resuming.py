"""Checkpointed training state, so that an interrupted `fit` resumes exactly.

A run in progress keeps `training_state.npz` in its `<name>.partial/` folder, replaced
atomically at epochs' ends (within a budget of time, see `TrainingCheckpoint`), every
`training.checkpoint_minutes` within an epoch and at the batch where the first Ctrl-C or
SIGTERM arrived. The state is gathered there and written by a thread of its own while
training goes on. It holds everything the rest of the run depends on:

| what | from |
|---|---|
| the model's variables (weights, normalization statistics, dropout's random-seed state) | `model.variables` |
| the optimizer's (step count, moments, accumulated gradients, learning rate) | `model.optimizer.variables` |
| the epoch's running metric sums, within an epoch | `model.metrics_variables` |
| PyTorch's global random state (its unseeded dropout draws from it) | `torch.get_rng_state()` |
| every stateful callback's state (early stopping's best weights and wait, ...) | `state_dict()` |
| the epoch, the batches of it done, fine-tuning's phase, whether training ended | the loop |
| the history so far | the epoch logs |

The data order and augmentation need no state of their own: `app.feeding.Batches` derives
them from the seed, the epoch and the batch's index, so the resumed run reads the same
batches from the one where it stopped.

```python
checkpoint = TrainingCheckpoint(run / "training_state.npz", resume_from=load_training_state(path))
model.fit(..., initial_epoch=checkpoint.resume_from.epoch, callbacks=[..., checkpoint])
```
"""

import dataclasses
import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np

from app.errors import Terminated, UserError
from callbacks.training_state import sync_jax_state, write_atomically

FORMAT_VERSION = 1
# The state's arrays, by group (`<group>/<index>` in the file).
GROUPS = ("model", "optimizer", "metrics", "random")
# The signals whose first arrival saves the state and stops; the next one acts at once.
STOPPING_SIGNALS = ("SIGINT", "SIGTERM")


@dataclasses.dataclass
class TrainingState:
    """Where a run stopped, and all it needs to go on.

    Attributes:
        epoch: the epoch to continue (0-based).
        batch: the batches of `epoch` already trained (0: at its start).
        phase: 1, or 2 for fine-tuning's second phase.
        phase_start: the epoch the phase started at.
        stopped: training had ended within the phase (early stopping, the NaN guard).
        at_batch_start: saved as a batch began (by the timer or a signal), not as an epoch
            ended: the random state is then the one the next step needs, set just before it
            (at an epoch's first batch, its data loader has already drawn from PyTorch's).
        history: the logs of every finished epoch, `{key: [value per epoch]}`.
        callbacks: each tracked callback's `state_dict()`, in order.
        model_variables, optimizer_variables, metrics_variables: their values, in order.
        random_state: the backend's global random state outside the variables (PyTorch's
            generators), as arrays.
        identity: `{"backend", "config_hash", "data_fingerprint"}` of the run.
    """

    epoch: int
    batch: int
    phase: int
    phase_start: int
    stopped: bool
    history: dict
    callbacks: list
    model_variables: list
    optimizer_variables: list
    metrics_variables: list
    random_state: list
    identity: dict
    at_batch_start: bool = False


def save_training_state(path, state):
    """Writes `state` to `path` (an `.npz`) atomically: the old state or the new, never a
    mix of both."""
    arrays = {}
    for group in GROUPS:
        for index, value in enumerate(getattr(state, _field(group))):
            arrays[f"{group}/{index}"] = value
    callbacks = []
    for number, callback_state in enumerate(state.callbacks):
        plain = {}
        for key, value in callback_state.items():
            if isinstance(value, list) and value and isinstance(value[0], np.ndarray):
                for index, array in enumerate(value):
                    arrays[f"callback/{number}/{key}/{index}"] = array
                plain[key] = {"arrays": len(value)}
            else:
                plain[key] = value
        callbacks.append(plain)
    meta = {"format": FORMAT_VERSION, "epoch": state.epoch, "batch": state.batch,
            "phase": state.phase, "phase_start": state.phase_start, "stopped": state.stopped,
            "at_batch_start": state.at_batch_start,
            "history": state.history, "callbacks": callbacks, "identity": state.identity,
            "counts": {group: len(getattr(state, _field(group))) for group in GROUPS}}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    write_atomically(path, lambda temporary: np.savez(temporary, **arrays))


def _field(group):
    return "random_state" if group == "random" else f"{group}_variables"


def load_training_state(path):
    """The `TrainingState` saved at `path`.

    Raises:
        UserError: if the file is missing or damaged.
    """
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {key: stored[key] for key in stored.files}
        meta = json.loads(arrays.pop("meta").tobytes())
    except FileNotFoundError:
        raise UserError(f"{path} is missing: the run stopped before its first checkpoint, "
                        "so there is nothing to resume; start it again") from None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as error:
        raise UserError(f"{path} is damaged ({error}); start the run again") from None
    if meta.get("format") != FORMAT_VERSION:
        raise UserError(f"{path} was written by another version of this program "
                        f"(format {meta.get('format')}); start the run again")
    groups = {group: [arrays[f"{group}/{index}"] for index in range(count)]
              for group, count in meta["counts"].items()}
    callbacks = []
    for number, plain in enumerate(meta["callbacks"]):
        callbacks.append({
            key: [arrays[f"callback/{number}/{key}/{index}"] for index in range(value["arrays"])]
            if isinstance(value, dict) and set(value) == {"arrays"} else value
            for key, value in plain.items()})
    return TrainingState(
        epoch=meta["epoch"], batch=meta["batch"], phase=meta["phase"],
        phase_start=meta["phase_start"], stopped=meta["stopped"],
        at_batch_start=meta.get("at_batch_start", meta["batch"] > 0),
        history=meta["history"], callbacks=callbacks, identity=meta["identity"],
        **{_field(group): groups[group] for group in GROUPS})


class TrainingCheckpoint(keras.callbacks.Callback):
    """Saves the training state at epochs' ends, every `every_minutes` within an epoch and
    when asked to stop; restores a saved state when training starts.

    An epoch's end saves unless the last save was so recent that saving again would spend
    more than `time_budget` of the time since then (epochs of a few milliseconds would
    otherwise spend a fifth of it saving); the `fit`'s last epoch, an epoch after which
    training stops and an interrupt always save. A `kill -9` then loses at most about
    `1 / time_budget` times what a save costs (at 0.01, 100 × 3 ms on digits), besides the
    epoch.

    Put it after every other callback: it saves what they have done at an epoch's end, and
    restores their state after their own `on_train_begin` has reset it. The first SIGINT or
    SIGTERM only sets a flag; when the call of the step under way ends (at the next one's
    start) the state is saved and training stops with `KeyboardInterrupt` (SIGTERM:
    `app.errors.Terminated`). The next one acts at once.

    Args:
        path: the state file (`app.rundir.STATE_FILE` in the run's folder).
        tracked: the callbacks whose `state_dict()` is saved and restored.
        identity: what the state must match to be resumed (`TrainingState.identity`).
        resume_from: a `TrainingState` to restore when training starts, or `None`.

    Raises:
        UserError: if `resume_from` was saved by another backend, configuration or dataset
            (`check_resumable`).
        every_minutes: also save within an epoch once this many minutes have passed since
            the last save; `None` saves at epoch ends only.
        time_budget: the largest share of training time that epoch-end saves may take,
            e.g. `0.01`; `None` saves at every epoch's end.

    Attributes:
        history: the logs of every finished epoch, the resumed ones included.
        phase, phase_start: set to 2 and its first epoch before fine-tuning's second `fit`.
        interrupt_signal: `"SIGINT"` or `"SIGTERM"` once one has asked to stop.

    Example:

    ```python
    checkpoint = TrainingCheckpoint(path, tracked=[stopper], identity=identity)
    model.fit(x, y, epochs=10, callbacks=[stopper, checkpoint])
    ```
    """

    # Keras dispatches the batch-end hooks of `async_safe` callbacks on a thread and goes on
    # training. This one's only ever acts on TensorFlow without a distribution strategy,
    # which builds the metrics in the first step and never dispatches on a thread.
    async_safe = True

    def __init__(self, path, tracked=(), identity=None, resume_from=None, every_minutes=None,
                 time_budget=None):
        super().__init__()
        self.path = path
        self.tracked = list(tracked)
        self.identity = identity or {}
        if resume_from is not None:
            check_resumable(resume_from, self.identity)
        self.resume_from = resume_from
        self.every_minutes = every_minutes
        self.time_budget = time_budget
        self.history = {} if resume_from is None else {
            key: list(values) for key, values in resume_from.history.items()}
        self.phase, self.phase_start = ((1, 0) if resume_from is None
                                        else (resume_from.phase, resume_from.phase_start))
        self.interrupt_signal = None
        self._epoch = 0
        self._batches_before = 0  # batches of the epoch trained before this `fit` began
        self._saved_metrics = None  # running sums to add back after the first resumed batch
        self._saved_random_state = None  # to set before the first resumed batch
        self._last_save = time.monotonic()
        self._gathering_seconds = 0.0  # what the last save cost the training thread
        self._writer = None  # the thread that writes the states
        self._writing = None  # the `Future` of the last state saved: its writing's seconds
        self._previous_handlers = {}
        self._stepped = False  # whether a step ran in this `fit` (resumed or not)

    def on_train_begin(self, logs=None):
        self._stepped = False
        self._catch_signals()
        state, self.resume_from = self.resume_from, None
        if state is not None:
            self._restore(state)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        if self._saved_metrics is not None and len(self.model.metrics_variables) == len(
                self._saved_metrics):
            # Keras has just reset the metrics: the resumed epoch's running sums go on from
            # the saved ones, in the uninterrupted run's order of addition.
            self._add_saved_metrics()

    def on_train_batch_begin(self, batch, logs=None):
        if self._saved_random_state is not None:
            _set_random_state(self._saved_random_state)
            self._saved_random_state = None
        if not (batch or self._stepped) or self._saved_metrics is not None:
            return  # no step yet in this `fit`: TensorFlow builds the optimizer in the first
        # The last call's end, seen at the next one's start: Keras waits for every call's
        # result before it dispatches the next when a callback has a batch-end hook.
        done = self._batches_before + batch
        if self.interrupt_signal is not None:
            self.save(done, at_batch_start=True)
            self._stop()
        if (self.every_minutes is not None
                and time.monotonic() - self._last_save >= 60 * self.every_minutes):
            self.save(done, at_batch_start=True)

    def on_train_batch_end(self, batch, logs=None):
        if self._saved_metrics is not None:
            self._add_saved_metrics()

    def on_epoch_end(self, epoch, logs=None):
        self._stepped = True
        self._batches_before = 0
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        self._epoch = epoch + 1
        stopped = bool(self.model.stop_training)
        last = epoch + 1 >= (self.params or {}).get("epochs", 0)
        if stopped or last or self.interrupt_signal is not None or self._save_is_due():
            self.save(0, stopped=stopped)
        if self.interrupt_signal is not None:
            self._stop()

    def _save_is_due(self):
        """Whether an epoch's end saves, by `time_budget`."""
        if self.time_budget is None:
            return True
        if self._writing is not None and not self._writing.done():
            return False  # still writing the last one
        cost = self._gathering_seconds + (self._writing.result() if self._writing else 0.0)
        return self.time_budget * (time.monotonic() - self._last_save) >= cost

    def on_train_end(self, logs=None):
        self.close()

    def close(self):
        """Gives the signals back to their previous handlers and returns once the last state
        is on disk. `on_train_end` calls it; call it after a `fit` that raised (which calls
        no `on_train_end`)."""
        self._release_signals()
        self.wait()
        if self._writer is not None:
            self._writer.shutdown()
            self._writer = None

    def _stop(self):
        self.close()
        stop = Terminated if self.interrupt_signal == "SIGTERM" else KeyboardInterrupt
        raise stop(f"stopped by {self.interrupt_signal} in epoch {self._epoch + 1}")

    def save(self, batch, stopped=False, at_batch_start=False):
        """Saves the state: gathers it now (`batch` batches of the current epoch are done)
        and writes it on a thread of its own while training goes on (`wait` for the file).
        `at_batch_start`: called as a batch begins, not as an epoch ends.
        """
        started = time.monotonic()
        model = self.model
        sync_jax_state(model)
        state = TrainingState(
            epoch=self._epoch, batch=batch, phase=self.phase, phase_start=self.phase_start,
            stopped=stopped, at_batch_start=at_batch_start,
            history=self.history,
            callbacks=[callback.state_dict() for callback in self.tracked],
            model_variables=_values(model.variables),
            optimizer_variables=_values(model.optimizer.variables),
            metrics_variables=_values(model.metrics_variables),
            random_state=_random_state(), identity=self.identity)
        self.wait()
        if self._writer is None:
            # One thread, kept: starting one costs about 0.5 ms. Its write finishes even if
            # the process exits (and replaces the file atomically anyway).
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="training-state")
        self._writing = self._writer.submit(_timed, save_training_state, self.path, state)
        self._last_save = time.monotonic()
        self._gathering_seconds = self._last_save - started

    def wait(self):
        """Returns once the last state saved is on disk.

        Raises:
            OSError: what writing it raised (a full disk, a folder removed).
        """
        writing, self._writing = self._writing, None
        if writing is not None:
            writing.result()

    def _restore(self, state):
        model = self.model
        optimizer = model.optimizer
        if not optimizer.built:  # TensorFlow builds it in the first step
            optimizer.build(model.trainable_variables)
        _assign(model.variables, state.model_variables, "model")
        _assign(optimizer.variables, state.optimizer_variables, "optimizer")
        # Saved at an epoch's end, the random state is restored here, before whatever draws
        # from it until the next step (as in the uninterrupted run: the epoch's data loader);
        # saved as a batch began, just before the next step, as then nothing came between.
        if state.at_batch_start:
            self._saved_random_state = state.random_state
        else:
            _set_random_state(state.random_state)
        for callback, callback_state in zip(self.tracked, state.callbacks, strict=True):
            callback.load_state_dict(callback_state)
        self._epoch, self._batches_before = state.epoch, state.batch
        if state.batch:
            # The epoch's running sums (loss, accuracy) are added back when the epoch starts,
            # or where the first step builds the metrics (TensorFlow), after it.
            self._saved_metrics = state.metrics_variables

    def _add_saved_metrics(self):
        model = self.model
        sync_jax_state(model)
        for variable, saved in zip(model.metrics_variables, self._saved_metrics, strict=True):
            variable.assign(saved + variable.numpy())
        self._saved_metrics = None

    def _catch_signals(self):
        if threading.current_thread() is not threading.main_thread():
            return
        for name in STOPPING_SIGNALS:
            signum = getattr(signal, name)
            self._previous_handlers[signum] = signal.getsignal(signum)
            signal.signal(signum, self._on_signal)

    def _release_signals(self):
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}

    def _on_signal(self, signum, frame):
        # Only a flag: changing the model mid-step crashed JAX ("Array has been deleted").
        # The handler before this one takes the next signal: Ctrl-C stops at once.
        signal.signal(signum, self._previous_handlers.pop(signum))
        self.interrupt_signal = signal.Signals(signum).name
        again = "Ctrl-C" if signum == signal.SIGINT else "the signal"
        print(f"\nInterrupted ({self.interrupt_signal}): saving the state after this batch; "
              f"{again} again stops at once (the last checkpoint stays)", flush=True)


class WithoutHook(keras.callbacks.Callback):
    """`callback` with one of its hooks left out, so that two `fit` calls look like one
    training to it (a run resumed within an epoch finishes that epoch in a `fit` of its own).

    Args:
        callback: the callback to forward to.
        hook: the hook to leave out, e.g. `"on_train_end"`.
    """

    def __init__(self, callback, hook):
        super().__init__()
        self.callback = callback
        self.async_safe = getattr(callback, "async_safe", False)
        for name in dir(keras.callbacks.Callback):
            if name.startswith("on_"):
                setattr(self, name, _ignore if name == hook else getattr(callback, name))

    def set_model(self, model):
        super().set_model(model)
        self.callback.set_model(model)

    def set_params(self, params):
        super().set_params(params)
        self.callback.set_params(params)


def _ignore(*arguments, **keywords):
    pass


def _timed(function, *arguments):
    """Calls `function(*arguments)`; returns the seconds it took."""
    started = time.monotonic()
    function(*arguments)
    return time.monotonic() - started


def check_resumable(state, identity):
    """Refuses a state saved by another backend, configuration or dataset.

    Raises:
        UserError: naming what differs.
    """
    saved = state.identity
    if saved.get("backend") != identity.get("backend"):
        raise UserError(f"the run was trained on {saved.get('backend')}; resume it with "
                        f"--backend {saved.get('backend')}")
    if saved.get("config_hash") != identity.get("config_hash"):
        raise UserError("the run's config.yaml changed since it started; restore it, or start "
                        "a new run")
    if saved.get("data_fingerprint") != identity.get("data_fingerprint"):
        raise UserError("the run's data changed since it started (its fingerprint differs); "
                        "restore the data, or start a new run")


def _values(variables):
    # `numpy()` also reads TensorFlow's per-device metric sums under MirroredStrategy.
    return [np.asarray(variable.numpy()) for variable in variables]


def _random_state():
    """PyTorch's generators (CPU, then each GPU's); the other backends keep every random
    state in variables (`SeedGenerator`)."""
    if keras.backend.backend() != "torch":
        return []
    import torch

    states = [torch.get_rng_state()]
    if torch.cuda.is_available():
        states += torch.cuda.get_rng_state_all()
    return [state.numpy() for state in states]


def _set_random_state(states):
    if not states:
        return
    import torch

    torch.set_rng_state(torch.from_numpy(states[0]))
    if len(states) > 1:
        torch.cuda.set_rng_state_all([torch.from_numpy(state) for state in states[1:]])


def _assign(variables, values, what):
    if len(variables) != len(values) or any(
            tuple(variable.shape) != value.shape for variable, value in zip(variables, values)):
        raise UserError(f"the saved state does not fit the {what} (another model or "
                        "configuration); start a new run")
    for variable, value in zip(variables, values):
        variable.assign(value)

