"""`python -m app fit`: train, select the best epoch on validation data, test once, write the run.

The order matters: the configuration and the data are checked and the run directory is
planned before Keras starts, so bad input fails fast and leaves nothing behind.

```python
config = load_config(overrides=["training.epochs=5"])
run_dir, metrics = run_fit(config)   # runs/mlp-teacher-<timestamp>/, metrics.json
```
"""

import dataclasses
import sys
from pathlib import Path

from app.commands.arguments import (BACKEND, CONFIGURED, DISTRIBUTED, cluster_of,
                                    distribution_flags, prepare, run_beside_process_zero,
                                    start_backend)
from app.config import load_config
from app.errors import UserError
from app.rundir import CLASSES_FILE, CONFIG_FILE, PARTIAL_SUFFIX, STATE_FILE


def add_parser(commands):
    parser = commands.add_parser(
        "fit", parents=[BACKEND, CONFIGURED, DISTRIBUTED],
        help="train a model and write a run directory",
        description="Train the configured model, keep the best epoch on validation data, "
                    "evaluate it once on the test split and write runs/<name>-<timestamp>/. "
                    "Until it is finished the run lives in <name>.partial/, which "
                    "--resume continues after an interruption.",
    )
    parser.add_argument("--resume", metavar="DIR",
                        help="continue the interrupted run in DIR (its .partial directory) "
                             "exactly where it stopped, with its own configuration")
    parser.set_defaults(handler=handle)


def handle(arguments):
    from app.reporting import format_summary

    cluster = cluster_of(arguments)
    if arguments.resume is not None:
        if arguments.config is not None or arguments.overrides:
            raise UserError("--resume continues the run with its own config.yaml; drop "
                            "--config and --set")
        folder = check_partial_run(Path(arguments.resume))
        config = load_config(folder / CONFIG_FILE)
        strategy = config.distribution.strategy
        if cluster.several and strategy != "data-parallel":
            raise UserError(f"--num-processes resumes data-parallel runs; this run's "
                            f"config.yaml has distribution.strategy: {strategy}, so resume it "
                            f"in one process")
        start_backend(arguments.backend, config, cluster)
        if cluster.process_id > 0:
            _resume_beside_process_zero(folder, config, cluster)
            return 0
        run_dir, metrics = run_fit(config, resume=folder)
    else:
        config = prepare(arguments, distribution_flags(arguments), cluster=cluster)
        if cluster.process_id > 0:
            run_beside_process_zero(run_fit, config, cluster)
            return 0
        run_dir, metrics = run_fit(config)
    print(format_summary(metrics, run_dir))
    return 0


def check_partial_run(folder):
    """`folder`, checked to be an interrupted run that `--resume` can continue.

    Raises:
        UserError: naming what is wrong with it.
    """
    if not folder.name.endswith(PARTIAL_SUFFIX):
        if folder.with_name(folder.name + PARTIAL_SUFFIX).is_dir():
            folder = folder.with_name(folder.name + PARTIAL_SUFFIX)
        elif folder.is_dir():
            raise UserError(f"{folder} is a finished run, not an interrupted one (a "
                            f"<name>{PARTIAL_SUFFIX} directory); there is nothing to resume")
    if not folder.is_dir():
        raise UserError(f"{folder} is not a directory; pass the <name>{PARTIAL_SUFFIX} "
                        "directory of an interrupted fit (python -m app runs lists them)")
    missing = [name for name in (CONFIG_FILE, CLASSES_FILE) if not (folder / name).is_file()]
    if missing:
        raise UserError(f"{folder} cannot be resumed (missing {', '.join(missing)}): it "
                        "stopped while starting; start the run again")
    return folder


def run_fit(config, resume=None):
    """Trains the configured model and writes a complete run directory.

    Until it is complete the run lives in `<name>.partial/` with its training state (see
    `app.resuming`): an interrupted run keeps it there, to resume.

    Args:
        config: a validated `app.config.Config` (resumed: the run's own).
        resume: the `.partial` folder of an interrupted run to continue, or `None`.

    Returns:
        `(run_dir, metrics)`: the path of the run directory and what `metrics.json` holds.

    Raises:
        UserError: on bad data, a model that cannot take the data, or a run whose monitored
            metric was never finite.
        KeyboardInterrupt: interrupted (`app.errors.Terminated`: by SIGTERM); its message
            says how to resume.
    """
    from app.data import load_dataset
    from app.engine import check_model_fits_data, resolve_config, train_and_test
    from app.rundir import (BEST_MODEL_FILE, LR_FIND_JSON, Staging, default_run_name,
                            plan_run_directory, read_json, write_reports, write_run_start)

    dataset = load_dataset(config.data, seed=config.seed)
    check_model_fits_data(config.model, dataset)
    if resume is None:
        name = default_run_name(config)
        config = resolve_config(config, name)
        staging = Staging(plan_run_directory(config.output, name),
                          renumber=config.output.timestamp, keep_if=_resumable)
    else:
        # A resumed run's folder is the user's work: it stays, whatever stops this process.
        staging = Staging(resume.with_name(resume.name[:-len(PARTIAL_SUFFIX)]), folder=resume,
                          keep_on_error=True)
    with staging:
        folder = staging.folder
        lr_finder = None
        if resume is None:
            if config.schedule.lr == "auto":
                lr_finder = _find_learning_rate(config, dataset, folder)
                config = dataclasses.replace(config, schedule=dataclasses.replace(
                    config.schedule, lr=lr_finder["suggestion"]))
            write_run_start(folder, config, dataset.class_names)
        elif (folder / LR_FIND_JSON).is_file():
            lr_finder = read_json(folder / LR_FIND_JSON)
        try:
            # Stopped before its first checkpoint, a resumed run starts from the beginning.
            history, metrics = train_and_test(config, dataset, folder / BEST_MODEL_FILE,
                                              state_path=folder / STATE_FILE,
                                              resume=(folder / STATE_FILE).is_file())
        except UserError:
            raise
        except BaseException as error:
            if not (folder / STATE_FILE).is_file():
                raise
            hint = resume_hint(folder)
            if isinstance(error, KeyboardInterrupt):
                raise type(error)(hint) from None
            print(f"error: training stopped ({type(error).__name__}); {hint}", file=sys.stderr)
            raise
        if lr_finder is not None:
            metrics["lr_finder"] = lr_finder
        write_reports(folder, history, metrics, title=staging.final_path.name)
        (folder / STATE_FILE).unlink()
        path = staging.commit()
    return path, metrics


def _resume_beside_process_zero(folder, config, cluster):
    """Resumes `folder` in a process other than 0 of `cluster`, in step with process 0,
    which resumes the folder itself: this process resumes a copy, removed after.

    The copy is taken before this process joins the first step, so before process 0 can
    save a new state into the folder.
    """
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="app-process-") as scratch:
        copy = Path(scratch) / folder.name
        shutil.copytree(folder, copy)
        run_fit(config, resume=copy)
    print(f"process {cluster.process_id} of {cluster.num_processes}: resumed with process 0, "
          f"which writes the run directory")


def resume_hint(folder):
    """What an interrupted run prints: where it is and the command that resumes it."""
    import keras

    hint = (f"the run is kept in {folder}; resume it with: python -m app fit --resume "
            f"{folder} --backend {keras.backend.backend()}")
    if keras.backend.backend() == "jax":
        import jax

        if jax.process_count() > 1:
            hint += (" in each of its processes, with --coordinator, --num-processes and "
                     "--process-id")
    return hint


def _resumable(folder, error_type):
    """`Staging`'s `keep_if` for a run: keep it once it has a state to resume from, unless the
    user's input was wrong."""
    return not issubclass(error_type, UserError) and (folder / STATE_FILE).is_file()


def _find_learning_rate(config, dataset, directory):
    from app.lr_find import find_learning_rate, write_lr_find

    finder = find_learning_rate(config, dataset, rule=config.schedule.lr_rule)
    return write_lr_find(finder, directory)
