"""Run directories: their layout, and writing them so they are complete or absent.

A run directory (`fit`, `tune`, `distill`; `lr-find` writes a smaller one) holds:

| file | written by |
|---|---|
| `config.yaml`, `classes.json` | `write_run_start`, when training starts |
| `best.keras` | the best-epoch checkpoint, written when training ends |
| `training_state.npz` | `fit`, during training, for `fit --resume` (`app.resuming`); removed at the end |
| `history.csv`, `metrics.json`, `curves.png` | `write_reports`, at the end |
| `lr_find.csv`, `.png`, `.json` | `app.lr_find.write_lr_find`, with `schedule.lr: auto` |
| `scratch/` | `distill`: the student trained from the labels alone, a run of its own |
| `leaderboard.csv`, `best_config.yaml`, `tuner/` | `tune` (`app.tuning`), in `<name>.partial/` until done |

Everything is written through a `Staging` folder, `<name>.partial/`, and moved into place in
one step when the work succeeds; `fit`, `tune`, `distill` and `export` share that mechanism.
An interrupted `fit` or `tune` keeps its `.partial` folder, to resume.

```python
run_dir = plan_run_directory(config.output, default_run_name(config))
with Staging(run_dir) as staging:
    write_run_start(staging.folder, config, class_names)
    ...
    staging.commit()
```
"""

import dataclasses
import datetime
import itertools
import json
import os
import shutil
import tempfile
from pathlib import Path

from app.errors import UserError

CONFIG_FILE = "config.yaml"
CLASSES_FILE = "classes.json"
BEST_MODEL_FILE = "best.keras"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
CURVES_FILE = "curves.png"
# `distill`: the student trained from the labels alone, a run directory of its own inside.
SCRATCH_DIR = "scratch"
# `tune`: a search directory is a run directory with these too; until it is finished it is
# `<name>.partial/`, which `tune --resume` continues.
LEADERBOARD_FILE = "leaderboard.csv"
BEST_CONFIG_FILE = "best_config.yaml"
TUNER_DIR = "tuner"  # KerasTuner's state: oracle.json, a folder per trial
PARTIAL_SUFFIX = ".partial"
# `fit`'s training state while it runs (`app.resuming`), which `fit --resume` continues.
STATE_FILE = "training_state.npz"
# Held (flock) by the process writing a staging folder for as long as it runs, so that
# `python -m app runs` tells a run in progress from one that was killed.
LOCK_FILE = ".lock"
# The LR finder's curve and suggestions (`lr-find`, and `fit` with `schedule.lr: auto`).
LR_FIND_CSV, LR_FIND_PNG, LR_FIND_JSON = "lr_find.csv", "lr_find.png", "lr_find.json"
# What makes a folder a finished run that `evaluate`, `export` and `distill` accept.
REQUIRED_FILES = (CONFIG_FILE, BEST_MODEL_FILE, CLASSES_FILE, METRICS_FILE)


def default_run_name(config):
    """`output.name`, else `<architecture>-<size>`."""
    return config.output.name or f"{config.model.architecture}-{config.model.size}"


def plan_run_directory(output_config, default_name, now=None):
    """The path of a new run directory, checked to be free before any work starts.

    Args:
        output_config: an `app.config.OutputConfig`.
        default_name: the name to use when `output_config.name` is unset.
        now: the timestamp to use (`datetime`), for tests.

    Raises:
        UserError: when `output.timestamp` is off and the directory already exists.
    """
    parent = Path(output_config.dir)
    name = output_config.name or default_name
    if not output_config.timestamp:
        path = parent / name
        if path.exists():
            raise UserError(f"run directory {path} already exists; choose another output.name, "
                            "remove it, or set output.timestamp: true")
        return path
    stamp = (now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")
    path = parent / f"{name}-{stamp}"
    suffix = 1
    while path.exists():
        suffix += 1
        path = parent / f"{name}-{stamp}-{suffix}"
    return path


def check_run_directory(run_dir):
    """`run_dir` as a `Path`, checked to hold what a finished run writes.

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
    from app.data import load_dataset

    dataset = load_dataset(config.data, seed=config.seed)
    recorded = read_metrics(run_dir).get("data_fingerprint")
    if recorded and recorded != dataset.fingerprint:
        raise UserError(f"{dataset.description} has changed since {run_dir} was trained; "
                        f"its splits are not the run's splits ({remedy})")
    return dataset


def write_run_start(folder, config, class_names):
    """Writes `classes.json` and then `config.yaml` (the resolved configuration) into `folder`.

    `config.yaml` comes last: a search's workers wait for it, and `tune --resume` looks for it.
    """
    from app.config import dump_config

    (folder / CLASSES_FILE).write_text(json.dumps(class_names) + "\n")
    (folder / CONFIG_FILE).write_text(dump_config(config))


def read_classes(run_dir):
    return read_json(Path(run_dir) / CLASSES_FILE)


def read_metrics(run_dir):
    return read_json(Path(run_dir) / METRICS_FILE)


def read_json(path):
    """A run's JSON file; a damaged one (cut short, edited, not UTF-8) is a one-line error."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} is missing; {path.parent} is not a complete run directory "
                        "(train it again)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path} is damaged ({error}); restore it from a copy or train the "
                        "run again") from None


def write_reports(folder, history, metrics, title):
    """Writes `history.csv`, `metrics.json` and `curves.png` into `folder`."""
    from app.reporting import plot_curves, write_history_csv, write_json

    write_history_csv(history, folder / HISTORY_FILE)
    write_json(metrics, folder / METRICS_FILE)
    plot_curves(history, folder / CURVES_FILE, title=title, best_epoch=metrics["best"]["epoch"])


class Staging:
    """A context manager for work whose files appear all at once or not at all.

    Inside the `with` block files go to `folder`: by default `<final name>.partial` beside
    `final_path`, made with an exclusive `mkdir` when the work starts, which claims the final
    name then (two runs started in the same second never both train for one name); or a
    named one (an interrupted run's or search's `.partial` folder, being resumed).
    `commit()` renames the folder to `final_path` in one step; with `merge`, `final_path` is an existing folder (an export's
    output folder), the hidden folder is made inside it, and `commit()` moves each entry into
    it. Leaving the block without a commit deletes the folder, except on Ctrl-C when
    `keep_on_interrupt`, when `keep_if` says so, or always when `keep_on_error`.

    Args:
        final_path: where the work ends up.
        folder: the staging folder to use (created if missing), or `None` for a fresh one.
        merge: move the entries into the existing folder `final_path` instead.
        keep_on_interrupt: keep the folder when the block ends with `KeyboardInterrupt`.
        keep_on_error: keep the folder whatever ends the block (a resumed search's state).
        keep_if: a function of the folder and the type of the exception that ended the
            block: whether to keep the folder (a run that can be resumed).
        renumber: when the name is taken (a finished run, or another run's claim), claim
            `<name>-2`, `<name>-3`, ... instead of failing; `final_path` then says which.

    Example:

    ```python
    with Staging(Path("runs/mlp-20261122-101500")) as staging:
        (staging.folder / "config.yaml").write_text(text)
        staging.commit()
    ```
    """

    def __init__(self, final_path, folder=None, merge=False, keep_on_interrupt=False,
                 keep_on_error=False, renumber=False, keep_if=None):
        self.final_path = Path(final_path)
        self.renumber = renumber
        self.folder = None if folder is None else Path(folder)
        self.merge = merge
        self.keep_on_interrupt = keep_on_interrupt
        self.keep_on_error = keep_on_error
        self.keep_if = keep_if
        self.committed = False
        self._created = []  # the missing folders above the staging folder that it made
        self._lock = None

    def __enter__(self):
        if self.folder is not None:
            _make_directory(self.folder)
            self._lock = _hold_lock(self.folder)
            return self
        parent = self.final_path if self.merge else self.final_path.parent
        self._created = [folder for folder in (parent, *parent.parents) if not folder.exists()]
        _make_directory(parent)
        if self.merge:
            self.folder = Path(tempfile.mkdtemp(prefix=f".{self.final_path.name}.", dir=parent))
            # mkdtemp makes a private (0700) folder; the package gets the usual permissions.
            umask = os.umask(0)
            os.umask(umask)
            self.folder.chmod(0o777 & ~umask)
        else:
            self.folder = self._claim()
            self._lock = _hold_lock(self.folder)
        return self

    def _claim(self):
        """Makes `<name>.partial` for the first free name, from `final_path` on."""
        base = self.final_path
        for number in itertools.count(1):
            candidate = base if number == 1 else base.with_name(f"{base.name}-{number}")
            folder = candidate.with_name(f"{candidate.name}{PARTIAL_SUFFIX}")
            if not candidate.exists():
                try:
                    folder.mkdir()
                except FileExistsError:
                    pass
                else:
                    self.final_path = candidate
                    return folder
            if not self.renumber:
                raise UserError(f"run directory {candidate} is taken (by a finished run, or by "
                                f"one still writing {folder.name}); choose another name, or "
                                "remove it if no run is writing it")

    def commit(self):
        """Moves the staged work into place; returns `final_path`.

        Raises:
            UserError: if `final_path` (or, with `merge`, one of the entries there) appeared
                in the meantime; nothing is moved then.
        """
        if self.merge:
            self._move_entries()
        elif self.final_path.exists():
            raise UserError(f"run directory {self.final_path} appeared while training; "
                            "nothing was written there")
        else:
            # The lock moves with the folder and is released only once it is in place.
            os.rename(self.folder, self.final_path)
            self._release_lock(self.final_path)
        self.committed = True
        return self.final_path

    def _release_lock(self, folder):
        if self._lock is not None:
            (folder / LOCK_FILE).unlink(missing_ok=True)
            self._lock.close()
            self._lock = None

    def _move_entries(self):
        entries = sorted(self.folder.iterdir())
        taken = [entry.name for entry in entries if (self.final_path / entry.name).exists()]
        if taken:
            raise UserError(f"{self.final_path / taken[0]} appeared meanwhile; nothing was "
                            "written")
        for entry in entries:
            entry.rename(self.final_path / entry.name)
        self.folder.rmdir()

    def __exit__(self, exc_type, exc, traceback):
        failed = exc_type is not None
        interrupted = failed and issubclass(exc_type, KeyboardInterrupt)
        keep = (self.keep_on_error or (interrupted and self.keep_on_interrupt)
                or (failed and self.keep_if is not None and self.keep_if(self.folder, exc_type)))
        if self._lock is not None and (self.committed or keep):
            self._lock.close()  # a kept folder keeps its lock file, unlocked
            self._lock = None
        if not self.committed and self.folder is not None and not keep:
            shutil.rmtree(self.folder, ignore_errors=True)
            self._release_lock(self.folder)
            # A failed first run leaves no empty `runs/` behind either.
            for folder in self._created:
                try:
                    folder.rmdir()
                except OSError:  # not empty: something else was written there meanwhile
                    break
        return False


@dataclasses.dataclass
class RunEntry:
    """One folder of an output directory, as `python -m app runs` lists it.

    Attributes:
        path: the folder.
        status: `"finished"`, `"running"` (a live process holds its lock) or `"stopped"`.
        epochs, monitor, best, test_accuracy: from a finished run's `metrics.json`.
        size_bytes: the size of every file in it.
    """

    path: Path
    status: str
    size_bytes: int
    epochs: int | None = None
    monitor: str | None = None
    best: float | None = None
    test_accuracy: float | None = None


def list_runs(directory):
    """The finished and partial runs in `directory`, by name; other folders are left out."""
    entries = []
    for path in sorted(Path(directory).iterdir()):
        if not path.is_dir():
            continue
        size = sum(item.stat().st_size for item in path.rglob("*") if item.is_file())
        if path.name.endswith(PARTIAL_SUFFIX):
            status = "running" if is_being_written(path) else "stopped"
            entries.append(RunEntry(path, status, size, **_progress(path)))
        elif all((path / name).is_file() for name in REQUIRED_FILES):
            try:
                metrics = read_metrics(path)
            except UserError:
                metrics = {}
            best = metrics.get("best", {})
            entries.append(RunEntry(path, "finished", size, epochs=metrics.get("epochs_run"),
                                    monitor=best.get("monitor"), best=best.get("value"),
                                    test_accuracy=metrics.get("test", {}).get("accuracy")))
    return entries


def _progress(folder):
    """The epochs done and the best value so far of a run in progress, from its training state
    (`app.resuming`); nothing for a search, or a run killed before its first checkpoint."""
    import zipfile

    import numpy as np
    import yaml

    try:
        with np.load(folder / STATE_FILE, allow_pickle=False) as stored:
            meta = json.loads(stored["meta"].tobytes())
        config = yaml.safe_load((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        monitor = config["early_stopping"]["monitor"]
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, yaml.YAMLError):
        return {}
    best = [state["best_value"] for state in meta["callbacks"]
            if "best_epoch" in state and "best_value" in state]
    epochs = max((len(values) for values in meta["history"].values()), default=0)
    return {"epochs": epochs, "monitor": monitor, "best": best[0] if best else None}


def _hold_lock(folder):
    """An open lock file in `folder`, locked for this process (released when it exits, however
    it exits)."""
    import fcntl

    handle = open(folder / LOCK_FILE, "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UserError(f"{folder} is being written by another process; wait for it to "
                        "finish or stop it first") from None
    return handle


def is_being_written(folder):
    """Whether a live process holds `folder`'s lock (a run or a search in progress)."""
    import fcntl

    try:
        with open(folder / LOCK_FILE) as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except FileNotFoundError:
        return False
    except BlockingIOError:
        return True
    return False


def _make_directory(path):
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create output directory {path}: {error.strerror}") from None
