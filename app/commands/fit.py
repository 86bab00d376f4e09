"""`python -m app fit`: train, select the best epoch on validation data, test once, write the run.

The order matters: the configuration and the data are checked and the run directory is
planned before Keras starts, so bad input fails fast and leaves nothing behind.

```python
config = load_config(overrides=["training.epochs=5"])
run_dir, metrics = run_fit(config)   # runs/mlp-teacher-<timestamp>/, metrics.json
```
"""

import dataclasses

from app.commands.arguments import (BACKEND, CONFIGURED, DISTRIBUTED, distribution_flags,
                                    prepare)


def add_parser(commands):
    parser = commands.add_parser(
        "fit", parents=[BACKEND, CONFIGURED, DISTRIBUTED],
        help="train a model and write a run directory",
        description="Train the configured model, keep the best epoch on validation data, "
                    "evaluate it once on the test split and write runs/<name>-<timestamp>/.",
    )
    parser.set_defaults(handler=handle)


def handle(arguments):
    from app.reporting import format_summary

    config = prepare(arguments, distribution_flags(arguments))
    run_dir, metrics = run_fit(config)
    print(format_summary(metrics, run_dir))
    return 0


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
    from app.data import load_dataset
    from app.engine import check_model_fits_data, resolve_config, train_and_test
    from app.rundir import (BEST_MODEL_FILE, Staging, default_run_name, plan_run_directory,
                            write_reports, write_run_start)

    dataset = load_dataset(config.data, seed=config.seed)
    check_model_fits_data(config.model, dataset)
    name = default_run_name(config)
    run_dir = plan_run_directory(config.output, name)
    config = resolve_config(config, name)

    with Staging(run_dir, renumber=config.output.timestamp) as staging:
        lr_finder = None
        if config.schedule.lr == "auto":
            lr_finder = _find_learning_rate(config, dataset, staging.folder)
            config = dataclasses.replace(
                config, schedule=dataclasses.replace(config.schedule, lr=lr_finder["suggestion"]))
        write_run_start(staging.folder, config, dataset.class_names)
        history, metrics = train_and_test(config, dataset, staging.folder / BEST_MODEL_FILE)
        if lr_finder is not None:
            metrics["lr_finder"] = lr_finder
        write_reports(staging.folder, history, metrics, title=staging.final_path.name)
        path = staging.commit()
    return path, metrics


def _find_learning_rate(config, dataset, directory):
    from app.lr_find import find_learning_rate, write_lr_find

    finder = find_learning_rate(config, dataset, rule=config.schedule.lr_rule)
    return write_lr_find(finder, directory)
