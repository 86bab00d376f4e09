"""`python -m app prune RUN_DIR --sparsity 0.9`: prune a finished run into a new run.

```python
run_dir, metrics = run_prune(Path("runs/cnn-teacher"), sparsity=0.9, rounds=3, rewind="init")
metrics["pruning"]["dense"]["test_accuracy"], metrics["test"]["accuracy"]
```
"""

import dataclasses

from app.commands.arguments import BACKEND, int_at_least, positive_int, start_backend
from app.errors import UserError
from app.pruning import REWIND_FORMS, parse_rewind


def add_parser(commands):
    parser = commands.add_parser(
        "prune", parents=[BACKEND],
        help="prune a trained run's smallest weights and retrain it",
        description="Remove the smallest kernel weights of the run in RUN_DIR and train what "
                    "is left, on the run's data and configuration; write "
                    "runs/<name>-pruned<percent>/ with the pruned model as best.keras and "
                    "each layer's sparsity and the dense run's test accuracy in metrics.json. "
                    "--rewind restarts every round from early weights: the lottery ticket "
                    "experiment.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory of fit (or tune)")
    parser.add_argument("--sparsity", type=_sparsity, required=True,
                        help="fraction of kernel weights to remove, e.g. 0.9")
    parser.add_argument("--rounds", type=positive_int, default=1,
                        help="iterative pruning: rounds of pruning and training (each keeps "
                             "the same fraction of the survivors; default 1)")
    parser.add_argument("--rewind", metavar="WHEN",
                        help=f"{REWIND_FORMS}: start each round from the run's initial weights "
                             "or its weights after K epochs (default: fine-tune the pruned "
                             "weights)")
    parser.add_argument("--epochs", type=int_at_least(1),
                        help="epochs per round (default: the run's training.epochs)")
    parser.add_argument("--scope", choices=["layer", "global"], default="layer",
                        help="one threshold per layer (default) or over all layers")
    parser.add_argument("--name", help="the new run's name (default: <run>-pruned<percent>)")
    parser.set_defaults(handler=handle)


def handle(arguments):
    from app.reporting import format_summary

    rewind_epoch = parse_rewind(arguments.rewind)  # checked before Keras starts
    run_dir, metrics = run_prune(arguments, rewind_epoch)
    print(format_summary(metrics, run_dir))
    dense, pruned = metrics["pruning"]["dense"], metrics["test"]
    print(f"dense   test accuracy {dense['test_accuracy']:.4f}\n"
          f"pruned  test accuracy {pruned['accuracy']:.4f}  "
          f"({metrics['sparsity']['overall']:.1%} of kernel weights zero)")
    return 0


def run_prune(arguments, rewind_epoch):
    """Prunes the run in `arguments.run_dir` and writes a complete run directory.

    Returns:
        `(run_dir, metrics)`.
    """
    from pathlib import Path

    from app.config import load_config
    from app.engine import check_model_fits_data, resolve_config
    from app.rundir import (BEST_MODEL_FILE, CONFIG_FILE, Staging, check_run_directory,
                            load_run_dataset, plan_run_directory, read_metrics, write_reports,
                            write_run_start)

    source = check_run_directory(Path(arguments.run_dir))
    config = load_config(source / CONFIG_FILE)
    recorded = read_metrics(source)
    dense = recorded["test"]
    backend = start_backend(arguments.backend, config)
    if rewind_epoch is not None and recorded.get("backend") not in (None, backend):
        raise UserError(f"--rewind replays the run's own initialization, which only the backend "
                        f"that trained it reproduces; add --backend {recorded['backend']}")
    epochs = arguments.epochs or config.training.epochs
    if rewind_epoch is not None and rewind_epoch >= config.training.epochs:
        raise UserError(f"--rewind epoch:{rewind_epoch} is past the run's "
                        f"{config.training.epochs} epochs; rewind to an earlier epoch")
    if config.training.fine_tune.enabled:
        raise UserError("prune retrains the whole model; prune a run without "
                        "training.fine_tune (or export its model and fine-tune it first)")
    dataset = load_run_dataset(source, config, remedy="retrain the run on the current data")
    check_model_fits_data(config.model, dataset)
    name = arguments.name or f"{source.resolve().name}-pruned{round(arguments.sparsity * 100)}"
    output = dataclasses.replace(config.output, name=name)
    config = resolve_config(dataclasses.replace(config, output=output), name)

    import callbacks  # noqa: F401  (registers what the run's model holds)
    from app.model_files import load_model_file
    from app.pruning import prune_rounds, round_config

    trained = load_model_file(source / BEST_MODEL_FILE)
    with Staging(plan_run_directory(config.output, name),
                 renumber=config.output.timestamp) as staging:
        written = round_config(config, arguments.sparsity, epochs, arguments.scope)
        write_run_start(staging.folder, written, dataset.class_names)
        history, metrics, rounds = prune_rounds(
            config, dataset, trained, arguments.sparsity, arguments.rounds, rewind_epoch,
            epochs, arguments.scope, staging.folder / BEST_MODEL_FILE)
        metrics["pruning"] = {
            "source_run": source.resolve().name,
            "target_sparsity": arguments.sparsity,
            "scope": arguments.scope,
            "rewind": arguments.rewind,
            "epochs_per_round": epochs,
            "dense": {"test_accuracy": dense["accuracy"], "test_loss": dense["loss"]},
            "rounds": rounds,
        }
        write_reports(staging.folder, history, metrics, title=staging.final_path.name)
        path = staging.commit()
    return path, metrics


def _sparsity(text):
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (a fraction); got {text}")
    return value
