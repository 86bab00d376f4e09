"""`python -m app runs [DIR]`: the finished and partial runs of an output directory.

Finished runs show their epochs, best monitored value, test accuracy and size. Partial ones
are a run's or a search's `<name>.partial/` (`fit --resume` or `tune --resume` continues
it; a run shows its epochs done and best so far); each is "running" while a live process
holds its lock, else "stopped" (killed, or interrupted and kept). `--remove-partial`
deletes the stopped ones.

```console
$ python -m app runs
name                                 status    epochs  best             test acc  size
mlp-teacher-20261201-135254          finished  1       val_loss 0.6646  0.7333    1112.7 KiB
mlp-teacher-20261201-135301.partial  stopped   4       val_loss 0.1893  –         1480.2 KiB
```
"""

from pathlib import Path

from app.errors import UserError


def add_parser(commands):
    parser = commands.add_parser(
        "runs", help="list finished and partial runs; remove stopped ones",
        description="List the run directories in DIR (default: runs): finished runs with "
                    "their epochs, best value, test accuracy and size; partial ones (a "
                    "run's or a search's NAME.partial) as running or stopped. "
                    "--remove-partial deletes the stopped partial ones.")
    parser.add_argument("directory", nargs="?", default="runs", metavar="DIR")
    parser.add_argument("--remove-partial", action="store_true",
                        help="delete partial runs that no process is writing")
    parser.set_defaults(handler=handle)


def handle(arguments):
    import shutil

    from app.rundir import list_runs

    directory = Path(arguments.directory)
    if not directory.is_dir():
        raise UserError(f"{directory} is not a directory; pass the output.dir of your runs")
    entries = list_runs(directory)
    if not entries:
        print(f"no runs in {directory}")
        return 0
    print(format_runs(entries))
    if arguments.remove_partial:
        stopped = [entry for entry in entries if entry.status == "stopped"]
        for entry in stopped:
            shutil.rmtree(entry.path)
        print(f"removed {len(stopped)} stopped partial run(s)"
              + (f": {', '.join(entry.path.name for entry in stopped)}" if stopped else ""))
    return 0


def format_runs(entries):
    """A table of `app.rundir.RunEntry`s, one line each."""
    rows = [("name", "status", "epochs", "best", "test acc", "size")]
    for entry in entries:
        best = f"{entry.monitor} {entry.best:.4g}" if entry.best is not None else "–"
        accuracy = f"{entry.test_accuracy:.4f}" if entry.test_accuracy is not None else "–"
        epochs = str(entry.epochs) if entry.epochs is not None else "–"
        rows.append((entry.path.name, entry.status, epochs, best, accuracy,
                     f"{entry.size_bytes / 1024:.1f} KiB"))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(value.ljust(width) for value, width in zip(row, widths))
                     + "  " + row[-1] for row in rows)
