"""`python -m app.search_worker SEARCH_DIR --trials N`: run up to N trials of a search, then exit.

`python -m app tune` starts one after another when `tuning.trials_per_process` is set, so
that each process's memory is returned to the system after N trials (TensorFlow's grows
with every trial). The exit code says what happened: 0 the search is done, 3 the trial limit
was reached and more trials remain, 2 an error (its message is written to `--error-file`),
130 interrupted. The backend comes from `KERAS_BACKEND`, and a distributed worker's identity
from KerasTuner's environment variables, both inherited from the parent.
"""

import argparse
import sys
from pathlib import Path

from app.errors import UserError


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m app.search_worker")
    parser.add_argument("search_dir", type=Path)
    parser.add_argument("--trials", type=int, required=True)
    parser.add_argument("--error-file", type=Path, required=True)
    arguments = parser.parse_args(argv)
    from app.config import load_config
    from app.data import load_dataset
    from app.rundir import CONFIG_FILE
    from app.tuning import SEARCH_FINISHED, TRIAL_LIMIT_REACHED, run_trials

    try:
        config = load_config(arguments.search_dir / CONFIG_FILE)
        dataset = load_dataset(config.data, seed=config.seed)
        done = run_trials(arguments.search_dir, config, dataset, trial_limit=arguments.trials)
    except UserError as error:
        arguments.error_file.write_text(str(error))
        return 2
    except KeyboardInterrupt:
        return 130
    return SEARCH_FINISHED if done else TRIAL_LIMIT_REACHED


if __name__ == "__main__":
    sys.exit(main())
