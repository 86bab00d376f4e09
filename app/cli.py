"""The command line: `python -m app {fit,evaluate,info} [--backend NAME] ...`.

User errors are printed as one line on stderr with exit code 2 and no traceback.
"""

import argparse
import os
import sys

from app import __version__
from app.backend import BACKENDS, DEFAULT_BACKEND
from app.errors import UserError


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like every other user error."""

    def error(self, message):
        # prog is "app" or "app fit": the hint names the parser that raised the error.
        raise UserError(f"{message} (see: python -m {self.prog} --help)")


def build_parser():
    backend_help = (f"Keras backend: {', '.join(BACKENDS)} (default: $KERAS_BACKEND, "
                    f"else {DEFAULT_BACKEND})")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--backend", default=argparse.SUPPRESS, help=backend_help)

    parser = _Parser(prog="app", description="Efficient learning with Keras 3.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--backend", default=None, help=backend_help)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    fit = commands.add_parser(
        "fit", parents=[common], help="train a model and write a run directory",
        description="Train the configured model, keep the best epoch on validation data, "
                    "evaluate it once on the test split and write runs/<name>-<timestamp>/.",
    )
    fit.add_argument("--config", help="YAML configuration file (defaults for every key)")
    fit.add_argument("--set", dest="overrides", action="append", default=[],
                     metavar="SECTION.KEY=VALUE",
                     help="override one key, e.g. --set training.epochs=20 (repeatable)")

    evaluate = commands.add_parser(
        "evaluate", parents=[common], help="evaluate a run's best.keras again",
        description="Evaluate RUN_DIR/best.keras on a split of the run's data or on other data.",
    )
    evaluate.add_argument("run_dir", metavar="RUN_DIR")
    evaluate.add_argument("--split", choices=["train", "validation", "test"], default="test")
    evaluate.add_argument("--data", help="score this dataset (path or bundled name) instead")

    commands.add_parser("info", parents=[common],
                        help="Keras version, backend, installed backends and devices")
    return parser


def main(argv=None):
    """Runs the command line; returns the exit code."""
    try:
        arguments = build_parser().parse_args(argv)
        # Validate the configuration before the backend starts: bad input fails fast.
        config = _load_fit_config(arguments) if arguments.command == "fit" else None
        _start_backend(arguments.backend)
        if arguments.command == "fit":
            return _fit(config)
        if arguments.command == "evaluate":
            return _evaluate(arguments)
        return _info()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; no run directory was written", file=sys.stderr)
        return 130


def _load_fit_config(arguments):
    from app.config import load_config

    return load_config(arguments.config, arguments.overrides)


def _start_backend(name):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TensorFlow's start-up chatter
    from app.backend import select_backend

    select_backend(name)


def _fit(config):
    from app.reporting import format_summary
    from app.training import run_fit

    run_dir, metrics = run_fit(config)
    print(format_summary(metrics, run_dir))
    return 0


def _evaluate(arguments):
    from app.evaluation import run_evaluate

    result = run_evaluate(arguments.run_dir, split=arguments.split, data_source=arguments.data)
    print(f"{result['data']}: accuracy {result['accuracy']:.4f}  loss {result['loss']:.4f}  "
          f"({result['samples']} samples)")
    return 0


def _info():
    import keras

    from app.backend import backend_versions, installed_backends, list_devices

    versions = backend_versions()
    rows = [
        ("app", __version__),
        ("keras", keras.__version__),
        ("backend", keras.backend.backend()),
        ("installed", ", ".join(f"{name} {versions.get(name, '?')}"
                                for name in installed_backends())),
        ("devices", ", ".join(list_devices())),
    ]
    for label, value in rows:
        print(f"{label:<10} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
