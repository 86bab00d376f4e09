"""`python -m app tune`: search the `search` space with KerasTuner, retrain the best trial,
test it once and write a search directory.

A finished search directory (`runs/<name>-search-<timestamp>/`) holds `config.yaml` (the
search), `best_config.yaml` (`fit --config` on it repeats the best trial), `leaderboard.csv`,
the retrained `best.keras` with its `metrics.json`, `history.csv` and `curves.png`,
`classes.json`, and `tuner/` (KerasTuner's state, one folder per trial).

Until the search is finished it lives in `<that name>.partial/`: an interrupted search stays
there and `--resume` continues it; a search that fails is removed. The test split is
touched once, by the retrained best model, after the search.

Trials run in this process, or `tuning.trials_per_process` at a time in fresh worker
processes (`python -m app.search_worker`), which keeps TensorFlow's memory flat. With
`--chief`/`--worker`, KerasTuner's distributed mode runs the oracle in the chief and the
trials in the workers; they meet in `<output.dir>/<name>-search.partial/`.

```python
search_dir, metrics = run_tune(load_config("search.yaml"))
```
"""

import contextlib
import dataclasses
import io
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from app.config import config_hash, dump_config, load_config, with_values
from app.data import load_dataset
from app.distribution import check_distribution
from app.errors import UserError
from app.config.search_space import parse_search_space
from app.engine import check_model_fits_data
from app.rundir import (BEST_CONFIG_FILE, BEST_MODEL_FILE, CONFIG_FILE, LEADERBOARD_FILE,
                        PARTIAL_SUFFIX, Staging, default_run_name, plan_run_directory,
                        write_reports, write_run_start)

# tuning.trials_per_process when it is null: TensorFlow's memory grows with every trial.
DEFAULT_TRIALS_PER_PROCESS = {"tensorflow": 10}
# Exit codes of `python -m app.search_worker`.
SEARCH_FINISHED, TRIAL_LIMIT_REACHED = 0, 3
# How long a worker waits for its chief to create the search directory.
WORKER_WAIT_SECONDS = 300


class SearchInterrupted(KeyboardInterrupt):
    """Ctrl-C during a search: the partial search directory is kept for `--resume`."""


@dataclasses.dataclass(frozen=True)
class Role:
    """This process's part in a search: `local`, or KerasTuner's `chief` or a `worker`.

    Attributes:
        kind: `"local"`, `"chief"` or `"worker"`.
        address: the chief's `HOST:PORT` (distributed roles).
        tuner_id: the worker's KerasTuner id (`KERASTUNER_TUNER_ID`).
    """

    kind: str = "local"
    address: str = None
    tuner_id: str = None

    def environment(self):
        """The KerasTuner environment variables of this role."""
        if self.kind == "local":
            return {}
        host, _, port = self.address.rpartition(":")
        return {"KERASTUNER_TUNER_ID": "chief" if self.kind == "chief" else self.tuner_id,
                "KERASTUNER_ORACLE_IP": host, "KERASTUNER_ORACLE_PORT": port}


def run_tune(config, resume=None, role=Role()):
    """Runs (or resumes) a search and writes its directory.

    Args:
        config: a validated `app.config.Config` with a `search` section (ignored when
            resuming: the search's own `config.yaml` is used).
        resume: the `.partial` directory of an interrupted search, or `None`.
        role: this process's `Role`.

    Returns:
        `(search_dir, metrics)`, or `(None, None)` for a worker (its chief writes the results).

    Raises:
        UserError: on a bad search space, a search where too many trials in a row failed,
            or one where no trial completed.
        SearchInterrupted: on Ctrl-C; the partial directory is kept.
    """
    _check_tuner_installed()
    # KerasTuner reads a process's role from the environment; worker processes inherit it.
    os.environ.update(role.environment())
    if resume is not None:
        partial, config = _open_partial(resume)
    else:
        if config.distribution.strategy == "model-parallel":
            raise UserError("tune builds a different model in every trial, and model-parallel "
                            "lays out one model; use --distribution data-parallel")
        config, partial = _plan_search(config, role)
    final = partial.with_name(partial.name[:-len(PARTIAL_SUFFIX)])
    dataset = load_dataset(config.data, seed=config.seed)
    check_model_fits_data(config.model, dataset)
    if role.kind == "worker":
        _run_worker(config, partial, dataset)
        return None, None
    # A fresh search is removed when it fails, and kept on Ctrl-C for --resume; a resumed
    # one is always kept.
    fresh = resume is None
    try:
        with Staging(final, folder=partial, keep_on_interrupt=True,
                     keep_on_error=not fresh) as staging:
            if fresh:  # config.yaml comes last: workers wait for it, --resume looks for it
                write_run_start(staging.folder, config, dataset.class_names)
            _search(partial, config, dataset, chief=role.kind == "chief")
            metrics = _finish(partial, config, dataset, title=final.name)
            return staging.commit(), metrics
    except KeyboardInterrupt:
        raise SearchInterrupted(f"the search so far is in {partial}; continue it with: "
                                f"python -m app tune --resume {partial}") from None


def run_trials(search_dir, config, dataset, trial_limit=None):
    """Runs trials of the search in `search_dir` in this process.

    Args:
        search_dir: the partial search directory.
        config: its configuration.
        dataset: the `app.data.Dataset` (the test split is removed before any trial).
        trial_limit: stop after this many trials (`None`: run until the search is done).

    Returns:
        `True` if the search is done, `False` if `trial_limit` stopped it first.
    """
    from app.distribution import start_distribution, stop_distribution
    from app.hypermodel import TrialLimitReached, last_line

    _hide_retracing_warnings()
    devices = start_distribution(config.distribution)
    try:
        tuner = _tuner(search_dir, config, dataset, devices, trial_limit)
        tuner.search(verbose=0)
        return True
    except TrialLimitReached:
        return False
    except RuntimeError as error:
        if "consecutive failures" not in str(error):
            raise
        raise UserError(f"the search stopped after {config.tuning.max_consecutive_failed_trials} "
                        f"failed trials in a row; the last: {last_line(str(error))}") from None
    finally:
        stop_distribution(devices)


def _hide_retracing_warnings():
    """Drops TensorFlow's "calls ... triggered tf.function retracing" warning. TensorFlow
    counts the training steps of all models as one function (by their code), so trials that
    diverge in their first batches, each with a new model, trace on most calls and set it off;
    it says nothing about the search."""
    if os.environ.get("KERAS_BACKEND") != "tensorflow":
        return
    logger = logging.getLogger("tensorflow")
    if not any(isinstance(known, _RetracingFilter) for known in logger.filters):
        logger.addFilter(_RetracingFilter())


class _RetracingFilter(logging.Filter):
    def filter(self, record):
        return "triggered tf.function retracing" not in record.getMessage()


def _check_tuner_installed():
    from app.backend import is_installed

    needed = ["keras_tuner"]
    if os.environ.get("KERAS_BACKEND") == "tensorflow":
        needed.append("tensorboard")  # KerasTuner imports it there: every trial fails without
    missing = [name for name in needed if not is_installed(name)]
    if missing:
        raise UserError(f"tune needs {' and '.join(missing)}; pip install "
                        "'efficient-learning[tuner]'")


def trials_per_process(config):
    """`tuning.trials_per_process`, with null resolved for the running backend."""
    if config.tuning.trials_per_process is not None:
        return config.tuning.trials_per_process
    return DEFAULT_TRIALS_PER_PROCESS.get(os.environ.get("KERAS_BACKEND"), 0)


def _plan_search(config, role):
    from app.engine import resolve_config

    if not config.search:
        config = dataclasses.replace(config, search=default_search(config))
        print(f"no search section: searching {', '.join(config.search)} "
              "(the default space; see the README)", file=sys.stderr)
    if config.schedule.lr == "auto":
        raise UserError("schedule.lr: auto runs the LR finder, which tune does not; "
                        "search schedule.lr instead, e.g. {log_uniform: [1.0e-4, 1.0e-1]}")
    base_name = default_run_name(config)
    config = resolve_config(config, base_name)  # best_config.yaml then trains as <base_name>
    name = f"{base_name}-search"
    if role.kind == "local":
        final = plan_run_directory(dataclasses.replace(config.output, name=name), name)
        return config, final.with_name(final.name + PARTIAL_SUFFIX)
    # Chief and workers find each other's directory by name, so it has no timestamp.
    final = Path(config.output.dir) / name
    partial = final.with_name(final.name + PARTIAL_SUFFIX)
    if final.exists():
        raise UserError(f"search directory {final} already exists; choose another "
                        "output.name or remove it")
    if role.kind == "chief" and (partial / CONFIG_FILE).exists():
        raise UserError(f"an unfinished search is in {partial}; continue it with --resume "
                        f"{partial}, or remove it")
    return config, partial


def default_search(config):
    """The space `tune` searches when the config has no `search` section: the learning rate
    (log-uniform over three decades around every optimizer's default), the width where the
    architecture has one, and the dropout before the logits."""
    from app.tables.architectures import ARCHITECTURES

    search = {"schedule.lr": {"log_uniform": [1.0e-4, 1.0e-1]}}
    if "width" in ARCHITECTURES.row(config.model.architecture).keys:
        search["model.width"] = {"choice": [32, 64, 128, 256]}
    search["model.dropout"] = {"uniform": [0.0, 0.5]}
    return search


def _open_partial(path):
    partial = Path(path)
    if not partial.name.endswith(PARTIAL_SUFFIX) and partial.with_name(
            partial.name + PARTIAL_SUFFIX).is_dir():
        partial = partial.with_name(partial.name + PARTIAL_SUFFIX)
    if not (partial.name.endswith(PARTIAL_SUFFIX) and (partial / CONFIG_FILE).is_file()):
        raise UserError(f"{path} is not an unfinished search (a <name>-search-<time>.partial "
                        "directory with config.yaml); only interrupted searches can be resumed")
    config = load_config(partial / CONFIG_FILE)
    check_distribution(config.distribution, os.environ.get("KERAS_BACKEND"))
    return partial, config


def _search(partial, config, dataset, chief):
    if chief:
        # The chief only serves the oracle; it returns once every worker has stopped.
        _tuner(partial, config, dataset, devices=None).search(verbose=0)
        return
    _run_trials_bounded(partial, config, dataset)


def _run_trials_bounded(partial, config, dataset):
    limit = trials_per_process(config)
    if not limit:
        run_trials(partial, config, dataset)
        return
    while True:
        error_file = partial / f".worker-error-{os.getpid()}"
        try:
            code = _wait_for_worker([sys.executable, "-m", "app.search_worker", str(partial),
                                     "--trials", str(limit), "--error-file", str(error_file)])
            message = error_file.read_text().strip() if error_file.exists() else ""
        finally:
            error_file.unlink(missing_ok=True)
        if code == SEARCH_FINISHED:
            return
        if code == TRIAL_LIMIT_REACHED:
            continue
        if message:
            raise UserError(message)
        if code in (130, -2):
            raise KeyboardInterrupt
        raise UserError(f"a trial process exited with code {code}; see its output above")


def _wait_for_worker(command):
    """Runs a trial process to its end and returns its exit code.

    Ctrl-C reaches the worker too, which stops at a point where the search state is whole;
    so this process waits for it instead of killing it (as `subprocess.call` would).
    """
    process = subprocess.Popen(command)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.wait()
        raise


def _run_worker(config, partial, dataset):
    """A distributed worker: waits for the chief's directory, then runs trials from it."""
    chief_config = partial / CONFIG_FILE
    deadline = time.monotonic() + WORKER_WAIT_SECONDS
    while not chief_config.exists():
        if time.monotonic() > deadline:
            raise UserError(f"no chief created {partial} within {WORKER_WAIT_SECONDS} s; start "
                            "the chief (--chief) with the same config first")
        time.sleep(0.5)
    if config_hash(load_config(chief_config)) != config_hash(config):
        raise UserError(f"this worker's configuration differs from the chief's "
                        f"({chief_config}); start every worker with the chief's --config/--set")
    _run_trials_bounded(partial, config, dataset)


def _tuner(partial, config, dataset, devices, trial_limit=None):
    from app.hypermodel import ConfiguredHyperModel, build_tuner, without_test_split

    hypermodel = ConfiguredHyperModel(config, without_test_split(dataset), devices)
    with contextlib.redirect_stdout(io.StringIO()):  # hides "Reloading Tuner from ..."
        return build_tuner(config, hypermodel, partial, devices, trial_limit)


def _finish(partial, config, dataset, title):
    """Ranks the trials, retrains the best one like `fit`, tests it once, writes reports."""
    from app.leaderboard import format_leaderboard, leaderboard_rows, write_leaderboard_csv
    from app.engine import train_and_test

    tuner = _tuner(partial, config, dataset, devices=None)
    oracle = tuner.oracle
    keys = [dimension.key for dimension in parse_search_space(config.search)]
    rows = leaderboard_rows(oracle, keys, tuner.get_trial_dir)
    best_trials = oracle.get_best_trials(1)
    if not best_trials:
        failures = [row["message"] for row in rows if row["message"]]
        raise UserError(f"no trial of the search completed; the last error: "
                        f"{failures[-1] if failures else 'none recorded'}")
    write_leaderboard_csv(rows, partial / LEADERBOARD_FILE)
    print(format_leaderboard(rows))
    best = best_trials[0]
    values = {key: best.hyperparameters.values[key] for key in keys
              if key in best.hyperparameters.values}
    best_config = dataclasses.replace(with_values(config, values), search={})
    (partial / BEST_CONFIG_FILE).write_text(dump_config(best_config))
    print(f"best trial {int(best.trial_id) + 1}: {oracle.objective.name} {best.score:.4f}; "
          "retraining it and testing once", flush=True)
    history, metrics = train_and_test(best_config, dataset, partial / BEST_MODEL_FILE)
    metrics["search"] = {
        "tuner": config.tuning.tuner,
        "objective": oracle.objective.name,
        "trials": len(rows),
        "completed": sum(row["status"] == "completed" for row in rows),
        "best_trial": int(best.trial_id) + 1,
        "best_objective": best.score,
        "best_values": values,
    }
    write_reports(partial, history, metrics, title=title)
    return metrics
