"""The command line: `python -m app {fit,tune,distill,lr-find,doctor,evaluate,export,info} ...`.

User errors are printed as one line on stderr with exit code 2 and no traceback; an export
whose package fails its checks exits 1.
"""

import argparse
import os
import sys

from app import __version__
from app.backend import BACKENDS, DEFAULT_BACKEND
from app.config import DISTRIBUTION_STRATEGIES, LR_FINDER_RULES, TUNERS
from app.errors import UserError
from app.exporting import ExportCheckFailed
from app.lr_find import DEFAULT_SWEEP
from export import COMPRESSIONS, PRECISIONS


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

    configured = argparse.ArgumentParser(add_help=False)
    configured.add_argument("--config", help="YAML configuration file (defaults for every key)")
    configured.add_argument("--set", dest="overrides", action="append", default=[],
                            metavar="SECTION.KEY=VALUE",
                            help="override one key, e.g. --set training.epochs=20 (repeatable)")

    distributed = argparse.ArgumentParser(add_help=False)
    distributed.add_argument("--distribution", choices=DISTRIBUTION_STRATEGIES,
                             help="train on several devices (config: distribution.strategy): "
                                  "mirrored or tpu on tensorflow, data-parallel on jax")
    distributed.add_argument("--tpu", metavar="NAME",
                             help="the Cloud TPU to connect to (default: this TPU VM's chips)")

    commands.add_parser(
        "fit", parents=[common, configured, distributed],
        help="train a model and write a run directory",
        description="Train the configured model, keep the best epoch on validation data, "
                    "evaluate it once on the test split and write runs/<name>-<timestamp>/.",
    )

    tune = commands.add_parser(
        "tune", parents=[common, configured, distributed],
        help="search hyperparameters with KerasTuner and write a search directory",
        description="Search the config's search space with KerasTuner on validation data, "
                    "retrain the best trial, test it once and write "
                    "runs/<name>-search-<timestamp>/ with leaderboard.csv and best.keras.",
    )
    tune.add_argument("--tuner", choices=TUNERS, help="config: tuning.tuner (default: random)")
    tune.add_argument("--max-trials", type=_positive_int,
                      help="config: tuning.max_trials (random and bayesian)")
    tune.add_argument("--resume", metavar="DIR",
                      help="continue the interrupted search in DIR (its .partial directory)")
    roles = tune.add_mutually_exclusive_group()
    roles.add_argument("--chief", metavar="HOST:PORT",
                       help="serve the search's oracle at HOST:PORT for --worker processes")
    roles.add_argument("--worker", metavar="HOST:PORT",
                       help="run trials for the chief at HOST:PORT (same config as the chief)")
    tune.add_argument("--worker-id", help="this worker's name (default: worker-<host>-<pid>)")

    distill = commands.add_parser(
        "distill", parents=[common, configured],
        help="distil a trained teacher into a small student",
        description="Train the student (the model section; model.size defaults to student) "
                    "from the labels alone and by distillation from the teacher in RUN_DIR, "
                    "with the same budget, on the teacher's data and splits; write "
                    "runs/<name>-<timestamp>/ with the distilled student as best.keras and "
                    "teacher/scratch/distilled test accuracy in metrics.json.",
    )
    distill.add_argument("--teacher", required=True, metavar="RUN_DIR",
                         help="run directory of the teacher (from fit or tune)")
    distill.add_argument("--temperature", type=_positive_float,
                         help="config: distillation.temperature")
    distill.add_argument("--alpha", type=float, help="config: distillation.alpha (label weight)")

    lr_find = commands.add_parser(
        "lr-find", parents=[common, configured], help="suggest a learning rate (range test)",
        description="Sweep the learning rate exponentially on training batches of the "
                    "configured model, plot the loss against it and suggest a rate for "
                    "schedule.lr. Writes runs/<name>-lr-find-<timestamp>/.",
    )
    lr_find.add_argument("--min-lr", type=_positive_float, default=DEFAULT_SWEEP["min_lr"],
                         help="first rate of the sweep (default: %(default)g)")
    lr_find.add_argument("--max-lr", type=_positive_float, default=DEFAULT_SWEEP["max_lr"],
                         help="last rate of the sweep (default: %(default)g)")
    lr_find.add_argument("--steps", type=_sweep_steps, default=DEFAULT_SWEEP["steps"],
                         help="updates in the sweep (default: %(default)s)")
    lr_find.add_argument("--rule", choices=LR_FINDER_RULES, default=DEFAULT_SWEEP["rule"],
                         help="how the suggestion is read off the curve (default: %(default)s)")

    commands.add_parser(
        "doctor", parents=[common, configured], help="check the configured model before training",
        description="Initial loss against ln(classes), finite outputs, a gradient for every "
                    "variable, and overfitting one batch: a line with ✓ or ✗ each. Exits 1 if "
                    "a check fails.",
    )

    evaluate = commands.add_parser(
        "evaluate", parents=[common], help="evaluate a run's best.keras again",
        description="Evaluate RUN_DIR/best.keras on a split of the run's data or on other data.",
    )
    evaluate.add_argument("run_dir", metavar="RUN_DIR")
    evaluate.add_argument("--split", choices=["train", "validation", "test"], default="test")
    evaluate.add_argument("--data", help="score this dataset (path or bundled name) instead")

    export = commands.add_parser(
        "export", parents=[common], help="write a verified Core ML package (.mlpackage)",
        description="Convert RUN_DIR/best.keras (or a .keras file) to <name>.mlpackage "
                    "through TensorFlow, whatever backend trained it; check the saved package "
                    "with a NumPy interpreter against the Keras model on held-out data, rate "
                    "its Neural Engine readiness, and write both reports as JSON next to it. "
                    "A failed check writes nothing and exits 1.",
    )
    export.add_argument("source", metavar="RUN_DIR|MODEL.keras")
    export.add_argument("--precision", choices=PRECISIONS, default="fp16",
                        help="compute precision (default: fp16, which the Neural Engine runs)")
    export.add_argument("--batch", type=_batch_sizes, default=(1,), metavar="N[,N...]",
                        help="batch sizes the package accepts (default: 1; several give "
                             "enumerated shapes)")
    export.add_argument("--compress", choices=COMPRESSIONS,
                        help="compress the weights: int8, palettize6 or palettize4")
    export.add_argument("--strict", action="store_true",
                        help="fail when the Neural Engine report has errors")
    export.add_argument("--output", metavar="DIR",
                        help="where to write (default: beside the model)")
    export.add_argument("--name", help="package name (default: the run's name)")
    export.add_argument("--author", help="metadata: author (default: your user name)")
    export.add_argument("--license", default="not specified", help="metadata: license")
    export.add_argument("--description", help="metadata: short description")
    export.add_argument("--model-version", default="1.0", help="metadata: version")

    commands.add_parser("info", parents=[common],
                        help="Keras version, backend, installed backends and devices")
    return parser


def main(argv=None):
    """Runs the command line; returns the exit code."""
    try:
        arguments = build_parser().parse_args(argv)
        # Validate the configuration before the backend starts: bad input fails fast.
        configured = arguments.command in ("fit", "tune", "distill", "lr-find", "doctor")
        config = _load_config(arguments) if configured else None
        if arguments.command == "lr-find" and not arguments.min_lr < arguments.max_lr:
            raise UserError(f"--min-lr must be below --max-lr; got {arguments.min_lr:g} and "
                            f"{arguments.max_lr:g}")
        role = _tune_role(arguments) if arguments.command == "tune" else None
        backend = _start_backend(_export_backend(arguments) if arguments.command == "export"
                                 else arguments.backend)
        if config is not None:
            from app.distribution import check_distribution

            check_distribution(config.distribution, backend)
        if arguments.command == "fit":
            return _fit(config)
        if arguments.command == "tune":
            return _tune(config, arguments, role)
        if arguments.command == "distill":
            return _distill(config, arguments)
        if arguments.command == "lr-find":
            return _lr_find(config, arguments)
        if arguments.command == "doctor":
            return _doctor(config)
        if arguments.command == "evaluate":
            return _evaluate(arguments)
        if arguments.command == "export":
            return _export(arguments)
        return _info()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ExportCheckFailed as failure:
        if failure.args[1] is not None:
            _print_export(failure.args[1])
        print(f"error: {failure.args[0]}; nothing was written", file=sys.stderr)
        return 1
    except KeyboardInterrupt as interrupt:
        # A search says where its partial directory is; other commands leave nothing.
        what = interrupt.args[0] if interrupt.args else "no run directory was written"
        print(f"interrupted; {what}", file=sys.stderr)
        return 130


def _batch_sizes(text):
    sizes = text.split(",")
    if not all(size.strip().isdigit() and int(size) >= 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"must be batch sizes >= 1 separated by commas, "
                                         f"e.g. 1,8,32; got {text}")
    return tuple(sorted({int(size) for size in sizes}))


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0; got {text}")
    return value


def _positive_int(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1; got {text}")
    return int(text)


def _sweep_steps(text):
    if not text.isdigit() or int(text) < 5:
        raise argparse.ArgumentTypeError(f"must be an integer >= 5; got {text}")
    return int(text)


def _load_config(arguments):
    from app.config import load_config

    flags = {  # command-line flags that set configuration keys
        "distribution.strategy": getattr(arguments, "distribution", None),
        "distribution.tpu": getattr(arguments, "tpu", None),
        "tuning.tuner": getattr(arguments, "tuner", None),
        "tuning.max_trials": getattr(arguments, "max_trials", None),
        "distillation.temperature": getattr(arguments, "temperature", None),
        "distillation.alpha": getattr(arguments, "alpha", None),
    }
    overrides = [f"{key}={value}" for key, value in flags.items() if value is not None]
    if getattr(arguments, "resume", None) is not None:
        given = [flag for flag, value in [("--config", arguments.config),
                                          ("--set", arguments.overrides),
                                          ("--tuner/--max-trials/--distribution/--tpu",
                                           overrides)] if value]
        if given:
            raise UserError(f"--resume continues a search with its own configuration; "
                            f"drop {', '.join(given)}")
        return None
    from app.distillation import STUDENT_DEFAULTS

    defaults = STUDENT_DEFAULTS if arguments.command == "distill" else None
    return load_config(arguments.config, [*arguments.overrides, *overrides], defaults=defaults)


def _tune_role(arguments):
    import socket

    from app.tuning import Role

    if arguments.worker_id and not arguments.worker:
        raise UserError("--worker-id names a --worker; add --worker HOST:PORT")
    for address in (arguments.chief, arguments.worker):
        host, _, port = (address or "").rpartition(":")
        if address is not None and not (host and port.isdigit()):
            raise UserError(f"{address!r} must be HOST:PORT, e.g. 127.0.0.1:8000")
    if arguments.chief:
        return Role("chief", arguments.chief)
    if arguments.worker:
        if arguments.resume:
            raise UserError("--resume is for the chief; a worker joins with the chief's config")
        tuner_id = arguments.worker_id or f"worker-{socket.gethostname()}-{os.getpid()}"
        return Role("worker", arguments.worker, tuner_id)
    return Role()


def _start_backend(name):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TensorFlow's start-up chatter
    from app.backend import select_backend

    return select_backend(name)


def _fit(config):
    from app.reporting import format_summary
    from app.training import run_fit

    run_dir, metrics = run_fit(config)
    print(format_summary(metrics, run_dir))
    return 0


def _tune(config, arguments, role):
    from app.reporting import format_summary
    from app.tuning import run_tune

    search_dir, metrics = run_tune(config, resume=arguments.resume, role=role)
    if search_dir is None:
        print("worker finished: the chief writes the search's results")
        return 0
    search = metrics["search"]
    print(format_summary(metrics, search_dir))
    print(f"search            {search['completed']}/{search['trials']} trials completed "
          f"({search['tuner']}); best trial {search['best_trial']}: "
          f"{search['objective']} {search['best_objective']:.4f}")
    return 0


def _distill(config, arguments):
    from app.distillation import format_comparison, run_distill
    from app.reporting import format_summary

    run_dir, metrics = run_distill(config, arguments.teacher)
    print(format_summary(metrics, run_dir))
    print(format_comparison(metrics["distillation"]))
    return 0


def _lr_find(config, arguments):
    from app.lr_find import run_lr_find

    run_dir, summary = run_lr_find(config, arguments.min_lr, arguments.max_lr, arguments.steps,
                                   arguments.rule)
    others = ", ".join(f"{rule} {value:.3g}" for rule, value in summary["suggestions"].items()
                       if value is not None)
    print(f"suggested learning rate ({summary['rule']}): {summary['suggestion']:.3g}  "
          f"[{others}]")
    print(f"use it:  python -m app fit --set schedule.lr={summary['suggestion']:.3g}  "
          f"(or schedule.lr=auto)")
    print(f"curve:   {run_dir / 'lr_find.png'}")
    return 0


def _doctor(config):
    from app.doctor import format_checks, run_doctor

    checks = run_doctor(config)
    print(format_checks(checks))
    return 0 if all(check.ok for check in checks) else 1


def _evaluate(arguments):
    from app.evaluation import run_evaluate

    result = run_evaluate(arguments.run_dir, split=arguments.split, data_source=arguments.data)
    print(f"{result['data']}: accuracy {result['accuracy']:.4f}  loss {result['loss']:.4f}  "
          f"({result['samples']} samples)")
    return 0


def _export_backend(arguments):
    from app.backend import is_installed

    if arguments.backend not in (None, "tensorflow"):
        raise UserError(f"export converts through TensorFlow; drop --backend "
                        f"{arguments.backend} (a model trained on any backend exports)")
    if not is_installed("tensorflow"):
        raise UserError("export converts through TensorFlow and coremltools: "
                        "pip install 'efficient-learning[coreml]'")
    return "tensorflow"


def _export(arguments):
    from app.exporting import ExportOptions, run_export

    options = ExportOptions(
        precision=arguments.precision, batch_sizes=arguments.batch,
        compression=arguments.compress, strict=arguments.strict, output_dir=arguments.output,
        name=arguments.name, author=arguments.author, license=arguments.license,
        description=arguments.description, version=arguments.model_version)
    result = run_export(arguments.source, options)
    _print_export(result)
    return 0


def _print_export(result):
    from export import format_report

    verification = result["verification"]
    size = f"{result['size_bytes'] / 1024:.1f} KiB"
    if result["uncompressed_size_bytes"]:
        size += (f" ({result['compression']}; uncompressed "
                 f"{result['uncompressed_size_bytes'] / 1024:.1f} KiB)")
    print(f"package           {result['package']}")
    print(f"size              {size}, {result['precision']}, batch "
          f"{','.join(map(str, result['batch_sizes']))}")
    print(f"verification      {'passed' if verification['passed'] else 'FAILED'}: max |Δ logit| "
          f"{verification['max_abs_logit_error']:.3g}, top-1 agreement "
          f"{verification['top1_agreement']:.4f} on {verification['samples']} samples "
          f"({verification['data']}; {verification['criterion']})")
    lines = [*format_report(result["neural_engine"]).splitlines(),
             "(static rules: placement is confirmed on a Mac with MLComputePlan)"]
    print("\n".join(f"{'neural engine' if index == 0 else '':<18}{line}"
                    for index, line in enumerate(lines)))


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
