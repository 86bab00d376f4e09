"""Gradient accumulation: peak memory and update equality of K=8 × 32 against one batch of 256.

Usage: `python bench/accumulation.py [--size 96] [--updates 4]`. For each backend and each
way of training (one process each, so peak memory is the process's own), trains a small CNN
on `size`×`size` RGB images, whose activations (which grow with the batch) dominate memory,
from the same initial weights on the same 256·updates samples:

- `full`: batches of 256 with SGD+momentum;
- `accumulated`: batches of 32 with `GradientAccumulation(SGD+momentum, steps=8)`;

and prints the peak resident memory of each process, the peak growth during training (peak
minus the memory before `fit`), and the largest difference between the two final weights.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BACKENDS = ("tensorflow", "jax", "torch")
FILTERS = 32


def peak_megabytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def train(mode, size, updates, weights_path):
    import keras
    import numpy as np

    import callbacks

    rng = np.random.default_rng(0)
    x = rng.normal(size=(256 * updates, size, size, 3)).astype("float32")
    y = rng.integers(0, 10, size=256 * updates)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((size, size, 3))] + [
        keras.layers.Conv2D(FILTERS, 3, padding="same", activation="relu") for _ in range(3)
    ] + [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)])
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    if mode == "accumulated":
        optimizer = callbacks.GradientAccumulation(optimizer, steps=8)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.predict(x[:2], verbose=0)  # build before measuring the baseline
    before = peak_megabytes()
    if mode == "accumulated":
        model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0,
                  callbacks=[callbacks.AccumulationScheduler(samples_per_epoch=len(x))])
    else:
        model.fit(x, y, batch_size=256, epochs=1, shuffle=False, verbose=0)
    np.savez(weights_path, *[np.asarray(w) for w in model.get_weights()])
    return {"peak": peak_megabytes(), "growth": peak_megabytes() - before,
            "updates": int(model.optimizer.iterations)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--updates", type=int, default=4)
    parser.add_argument("--measure", nargs=2, metavar=("MODE", "WEIGHTS"), help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.measure:
        sys.path.insert(0, str(REPO))
        mode, weights_path = arguments.measure
        print(json.dumps(train(mode, arguments.size, arguments.updates, weights_path)))
        return
    import numpy as np

    print(f"CNN 3 × conv{FILTERS} on {arguments.size}×{arguments.size}×3, {arguments.updates} "
          "updates of 256 samples, SGD momentum 0.9\n")
    print("| backend | full 256: peak MB (growth) | 8 × 32: peak MB (growth) | updates | "
          "max |Δw| |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as directory:
        for backend in BACKENDS:
            results, finals = {}, {}
            for mode in ("full", "accumulated"):
                path = Path(directory) / f"{backend}-{mode}.npz"
                environment = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
                output = subprocess.run(
                    [sys.executable, __file__, "--size", str(arguments.size), "--updates",
                     str(arguments.updates), "--measure", mode, str(path)],
                    capture_output=True, text=True, env=environment, check=True).stdout
                results[mode] = json.loads(output.strip().splitlines()[-1])
                with np.load(path) as arrays:
                    finals[mode] = [arrays[key] for key in arrays.files]
            difference = max(float(np.max(np.abs(a - b)))
                             for a, b in zip(finals["full"], finals["accumulated"]))
            full, accumulated = results["full"], results["accumulated"]
            print(f"| {backend} | {full['peak']:.0f} ({full['growth']:+.0f}) | "
                  f"{accumulated['peak']:.0f} ({accumulated['growth']:+.0f}) | "
                  f"{full['updates']} / {accumulated['updates']} | {difference:.1e} |")


if __name__ == "__main__":
    main()
