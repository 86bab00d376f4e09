"""What the commands share: parent parsers, argument types, and starting a configured run.

```python
parser = subparsers.add_parser("fit", parents=[BACKEND, CONFIGURED, DISTRIBUTED])
config = prepare(arguments, flags={"distribution.strategy": arguments.distribution})
```
"""

import argparse
import dataclasses
import os
import tempfile

from app.backend import BACKENDS, DEFAULT_BACKEND
from app.config.schema import DISTRIBUTION_STRATEGIES


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0; got {text}")
    return value


def int_at_least(minimum):
    """An argument type for integers >= `minimum`."""
    def parse(text):
        if not text.isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}; got {text}")
        return int(text)
    return parse


positive_int = int_at_least(1)

BACKEND_HELP = (f"Keras backend: {', '.join(BACKENDS)} (default: $KERAS_BACKEND, "
                f"else {DEFAULT_BACKEND})")

# `--backend` after the command; SUPPRESS keeps a value given before the command.
BACKEND = argparse.ArgumentParser(add_help=False)
BACKEND.add_argument("--backend", default=argparse.SUPPRESS, help=BACKEND_HELP)

CONFIGURED = argparse.ArgumentParser(add_help=False)
CONFIGURED.add_argument("--config", help="YAML configuration file (defaults for every key)")
CONFIGURED.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE",
                        help="override one key, e.g. --set training.epochs=20 (repeatable)")

DISTRIBUTED = argparse.ArgumentParser(add_help=False)
DISTRIBUTED.add_argument("--distribution", choices=DISTRIBUTION_STRATEGIES,
                         help="train on several devices (config: distribution.strategy): "
                              "mirrored or tpu on tensorflow, data-parallel or model-parallel "
                              "on jax")
DISTRIBUTED.add_argument("--tpu", metavar="NAME",
                         help="the Cloud TPU to connect to (default: this TPU VM's chips)")
DISTRIBUTED.add_argument("--coordinator", metavar="HOST:PORT",
                         help="several processes (jax, data-parallel): process 0's address "
                              "(else $KERAS_DISTRIBUTION_JOB_ADDRESSES)")
DISTRIBUTED.add_argument("--num-processes", type=positive_int,
                         metavar="N", help="how many processes train the run together "
                                           "(else $KERAS_DISTRIBUTION_NUM_PROCESSES)")
DISTRIBUTED.add_argument("--process-id", type=int_at_least(0),
                         metavar="I", help="this process, 0 to N-1; 0 writes the run "
                                           "(else $KERAS_DISTRIBUTION_PROCESS_ID)")


def distribution_flags(arguments):
    """The configuration keys that `--distribution` and `--tpu` set."""
    return {"distribution.strategy": arguments.distribution, "distribution.tpu": arguments.tpu}


def cluster_of(arguments):
    """The `app.distribution.Cluster` of `--coordinator`, `--num-processes` and
    `--process-id` (or Keras's variables)."""
    from app.distribution import read_cluster

    return read_cluster(arguments.coordinator, arguments.num_processes, arguments.process_id)


def load_configuration(arguments, flags=None, defaults=None):
    """The validated configuration of `--config`, `--set` and the command's own flags.

    Args:
        arguments: the parsed arguments (with `config` and `overrides`).
        flags: `{dotted key: value or None}` set by the command's flags (after `--set`).
        defaults: dotted keys that replace the built-in defaults for this command.
    """
    from app.config import load_config

    given = [f"{key}={value}" for key, value in (flags or {}).items() if value is not None]
    return load_config(arguments.config, [*arguments.overrides, *given], defaults=defaults)


def start_backend(name, config=None, cluster=None):
    """Selects the Keras backend (before Keras is imported) with JAX's compilation cache and
    threads for virtual CPU devices, checks `config`'s devices against it and joins
    `cluster`'s other processes; returns the backend's name."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TensorFlow's start-up chatter
    from app.backend import give_virtual_devices_threads, select_backend, use_compilation_cache

    backend = select_backend(name)
    use_compilation_cache(backend)
    give_virtual_devices_threads(backend)
    if config is not None:
        from app.distribution import check_cluster, check_distribution, join_cluster
        from app.execution import check_execution

        check_distribution(config.distribution, backend)
        check_execution(config, backend)
        if cluster is not None:
            check_cluster(cluster, config.distribution, backend)
            join_cluster(cluster)
    return backend


def prepare(arguments, flags=None, defaults=None, cluster=None):
    """Loads the configuration, then starts the backend: bad input fails before Keras."""
    config = load_configuration(arguments, flags, defaults)
    start_backend(arguments.backend, config, cluster)
    return config


def run_beside_process_zero(run, config, cluster, *arguments):
    """Runs `run(config, *arguments)` in a process other than 0 of `cluster`, in step with
    process 0, which writes the run directory: this process's own goes to a temporary
    folder, removed after."""
    with tempfile.TemporaryDirectory(prefix="app-process-") as scratch:
        run(dataclasses.replace(config, output=dataclasses.replace(config.output, dir=scratch)),
            *arguments)
    print(f"process {cluster.process_id} of {cluster.num_processes}: trained with process 0, "
          f"which writes the run directory")
