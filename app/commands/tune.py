"""`python -m app tune`: search hyperparameters with KerasTuner (`app.tuning`).

```console
python -m app tune --config search.yaml --tuner bayesian --max-trials 20
python -m app tune --resume runs/mlp-teacher-search-20261122-083858.partial
```
"""

import os
import socket

from app.commands.arguments import (BACKEND, CONFIGURED, DISTRIBUTED, cluster_of,
                                    distribution_flags, load_configuration, positive_int,
                                    run_beside_process_zero, start_backend)
from app.config.schema import TUNERS
from app.errors import UserError


def add_parser(commands):
    parser = commands.add_parser(
        "tune", parents=[BACKEND, CONFIGURED, DISTRIBUTED],
        help="search hyperparameters with KerasTuner and write a search directory",
        description="Search the config's search space with KerasTuner on validation data, "
                    "retrain the best trial, test it once and write "
                    "runs/<name>-search-<timestamp>/ with leaderboard.csv and best.keras.",
    )
    parser.add_argument("--tuner", choices=TUNERS, help="config: tuning.tuner (default: random)")
    parser.add_argument("--max-trials", type=positive_int,
                        help="config: tuning.max_trials (random and bayesian)")
    parser.add_argument("--resume", metavar="DIR",
                        help="continue the interrupted search in DIR (its .partial directory)")
    roles = parser.add_mutually_exclusive_group()
    roles.add_argument("--chief", metavar="HOST:PORT",
                       help="serve the search's oracle at HOST:PORT for --worker processes")
    roles.add_argument("--worker", metavar="HOST:PORT",
                       help="run trials for the chief at HOST:PORT (same config as the chief)")
    parser.add_argument("--worker-id", help="this worker's name (default: worker-<host>-<pid>)")
    parser.set_defaults(handler=handle)


def handle(arguments):
    from app.reporting import format_summary
    from app.tuning import run_tune, trials_per_process

    cluster = cluster_of(arguments)
    if cluster.several and (arguments.resume or arguments.chief or arguments.worker):
        raise UserError("--num-processes trains every trial across the processes; --resume, "
                        "--chief and --worker run a search in one process each")
    flags = {**distribution_flags(arguments), "tuning.tuner": arguments.tuner,
             "tuning.max_trials": arguments.max_trials}
    if arguments.resume is not None:
        given = [flag for flag, value in [("--config", arguments.config),
                                          ("--set", arguments.overrides),
                                          ("--tuner/--max-trials/--distribution/--tpu",
                                           any(value is not None for value in flags.values()))]
                 if value]
        if given:
            raise UserError(f"--resume continues a search with its own configuration; "
                            f"drop {', '.join(given)}")
        config = None  # the search's own, read from the directory
    else:
        config = load_configuration(arguments, flags)
    role = _role(arguments)
    if cluster.several and trials_per_process(config):
        raise UserError("with --num-processes each process runs the trials itself; set "
                        "tuning.trials_per_process: 0")
    start_backend(arguments.backend, config, cluster)
    if cluster.process_id > 0:
        run_beside_process_zero(run_tune, config, cluster)
        return 0
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


def _role(arguments):
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
