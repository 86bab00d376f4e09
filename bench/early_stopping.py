"""The cost of EarlyStopping's best-weight snapshot: Keras's host copy against ours on device.

Usage: `python bench/early_stopping.py [--parameters 50e6]`. For each backend (one process
each), builds an MLP with about `--parameters` weights and times, median of 7:

- Keras 3.15 `EarlyStopping`'s snapshot: `model.get_weights()` (every weight to host NumPy),
  and its restore, `model.set_weights(...)`;
- ours: `callbacks.EarlyStopping._snapshot()` (a copy of each variable on its own device) and
  `_restore(...)`.

On a CPU-only machine "device" is host memory too, so this measures the copies themselves;
on a GPU, Keras's snapshot also crosses the bus every time the metric improves.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BACKENDS = ("tensorflow", "jax", "torch")
REPEATS = 7


def median_seconds(function):
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(parameters):
    import keras

    import callbacks

    width = int((parameters / 4) ** 0.5)  # four width×width layers
    model = keras.Sequential([keras.Input((width,))] +
                             [keras.layers.Dense(width) for _ in range(4)])
    count = model.count_params()
    stopper = callbacks.EarlyStopping()
    stopper.set_model(model)

    def synchronised(values):
        # Wait for asynchronous copies (JAX dispatches them) before stopping the clock.
        for value in values:
            keras.ops.convert_to_numpy(value[:1, :1]) if len(value.shape) == 2 else None
        return values

    keras_snapshot = model.get_weights()
    ours_snapshot = stopper._snapshot()
    return {
        "backend": keras.backend.backend(),
        "parameters": count,
        "megabytes": count * 4 / 1e6,
        "keras_snapshot": median_seconds(model.get_weights),
        "ours_snapshot": median_seconds(lambda: synchronised(stopper._snapshot())),
        "keras_restore": median_seconds(lambda: model.set_weights(keras_snapshot)),
        "ours_restore": median_seconds(lambda: stopper._restore(ours_snapshot)),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parameters", type=float, default=50e6)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.measure:
        sys.path.insert(0, str(REPO))
        print(json.dumps(measure(arguments.parameters)))
        return
    rows = []
    for backend in BACKENDS:
        environment = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
        result = subprocess.run([sys.executable, __file__, "--measure",
                                 "--parameters", str(arguments.parameters)],
                                capture_output=True, text=True, env=environment, check=True)
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    print(f"MLP of {rows[0]['parameters'] / 1e6:.1f}M float32 parameters "
          f"({rows[0]['megabytes']:.0f} MB); median of {REPEATS}\n")
    print("| backend | Keras snapshot (get_weights) | ours | ratio | Keras restore | ours | ratio |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['backend']} | {row['keras_snapshot'] * 1e3:.0f} ms | "
              f"{row['ours_snapshot'] * 1e3:.0f} ms | "
              f"{row['keras_snapshot'] / row['ours_snapshot']:.1f}x | "
              f"{row['keras_restore'] * 1e3:.0f} ms | {row['ours_restore'] * 1e3:.0f} ms | "
              f"{row['keras_restore'] / row['ours_restore']:.1f}x |")


if __name__ == "__main__":
    main()
