"""Streamed image folders against in-memory data: peak resident memory and training speed.

Usage: `python bench/data_pipeline.py [--sizes 5000,20000,100000] [--backend jax]
[--data-dir bench-data]`. It writes the generated shapes task at 64×64 (RGB, 10 classes)
once per size under `--data-dir` (reused by later runs), then trains the project's CNN
teacher on it in a fresh process per measurement, one after the other:

- `streamed` (`data.cache: none`): the folder is decoded once to check and summarise it,
  then every batch is decoded again by the worker threads of a `keras.utils.PyDataset`;
- `in memory` (`data.cache: memory`): every image decoded once into one float32 array.

Each process loads the data as `fit` does (listing, checks, split, statistics), trains
`--warmup` batches, then times `--batches` more; it reports its peak resident memory (the
whole process: Python, the backend, the model, the data) and training samples per second.
The table ends with the two targets: streamed peak memory at the largest size within 1.2×
of the smallest, and streamed samples/s at least 0.9× in-memory's on each size measured
both ways. In memory is measured up to `--memory-limit` images (it needs about 5× the
float32 size of the images at its peak).

A second table times the pipeline alone (no model) on the smallest folder: the project's
`Batches` (a `PyDataset` with 1, 2 and 4 threads) against a `tf.data` pipeline that reads
and decodes the same files with `num_parallel_calls=AUTOTUNE`, in images per second.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
IMAGE_SIZE = 64
CLASSES = 10


def measure(source, cache, warmup, batches, batch_size):
    """Runs in the worker process: loads `source` as `fit` does and times training."""
    import keras

    from app.config import load_config
    from app.data import load_dataset
    from app.engine import build_compiled_model, resolve_config
    from app.feeding import fit_inputs

    config = load_config(overrides=[
        f"data.source={source}", "data.color_mode=rgb", f"data.cache={cache}",
        "model.architecture=cnn", f"training.batch_size={batch_size}", "training.verbose=0"])
    config = resolve_config(config, "bench")
    started = time.perf_counter()
    dataset = load_dataset(config.data, seed=config.seed)
    load_seconds = time.perf_counter() - started
    keras.utils.set_random_seed(0)
    model = build_compiled_model(config, dataset)
    meter = BatchMeter(warmup, batches)
    inputs = fit_inputs(dataset, config)
    inputs.pop("validation_data")
    inputs.pop("validation_batch_size", None)
    callbacks = [*inputs.pop("callbacks", []), meter]
    model.fit(**inputs, epochs=1000, callbacks=callbacks, verbose=0)
    return {"load_s": load_seconds, "samples_per_s": batches * batch_size / meter.seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "train_samples": len(dataset.y_train)}


class BatchMeter:
    """Times `batches` training batches after `warmup` ones (across epochs), then stops."""

    def __new__(cls, warmup, batches):
        import keras

        class Meter(keras.callbacks.Callback):
            done = 0

            def on_train_batch_end(self, batch, logs=None):
                self.done += 1
                if self.done == warmup:
                    self.started = time.perf_counter()
                if self.done == warmup + batches:
                    self.seconds = time.perf_counter() - self.started
                    self.model.stop_training = True

        return Meter()


def pipeline_rates(source, batches, batch_size):
    """Runs in a worker process: images/s of each pipeline over the training files."""
    import tensorflow as tf
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    from app.config import DataConfig
    from app.data import load_dataset
    from app.feeding import Batches

    dataset = load_dataset(DataConfig(source=source, color_mode="rgb"), seed=0)
    rates = {}
    for workers in (1, 2, 4):
        adapter = PyDatasetAdapter(Batches(dataset.x_train, dataset.y_train, batch_size, seed=0,
                                           workers=workers))
        adapter.on_epoch_begin()
        started = time.perf_counter()
        for count, _ in enumerate(adapter.get_numpy_iterator(), start=1):
            if count == batches:
                break
        rates[f"PyDataset, {workers} thread(s)"] = batches * batch_size / (
            time.perf_counter() - started)
        adapter.on_epoch_end()

    def decode(path):
        return tf.cast(tf.io.decode_png(tf.io.read_file(path), channels=3), tf.float32)

    files = tf.data.Dataset.from_tensor_slices(list(dataset.x_train.paths))
    pipeline = files.map(decode, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(
        tf.data.AUTOTUNE)
    started = time.perf_counter()
    for images in pipeline.take(batches):
        images.numpy()
    rates["tf.data, AUTOTUNE"] = batches * batch_size / (time.perf_counter() - started)
    return rates


def ensure_shapes(directory, images):
    """The shapes task with `images` images at 64×64 under `directory` (written once)."""
    folder = directory / f"shapes-{images}"
    if not folder.exists():
        print(f"writing {images:,} images to {folder} ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "app", "make-dataset", "shapes", str(folder),
                        "--per-class", str(images // CLASSES), "--size", str(IMAGE_SIZE)],
                       check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return folder


def run_worker(arguments, folder, cache):
    command = [sys.executable, __file__, "--worker", str(folder), "--cache", cache or "",
               "--warmup", str(arguments.warmup), "--batches", str(arguments.batches),
               "--batch-size", str(arguments.batch_size)]
    environment = dict(os.environ, KERAS_BACKEND=arguments.backend, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=REPO)
    if result.returncode != 0:
        raise SystemExit(f"worker failed ({folder}, {cache}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5000,20000,100000")
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "jax"))
    parser.add_argument("--data-dir", default="bench-data")
    parser.add_argument("--memory-limit", type=int, default=20000,
                        help="largest size also measured in memory (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.worker:
        if not arguments.cache:
            print(json.dumps(pipeline_rates(arguments.worker, arguments.batches,
                                            arguments.batch_size)))
        else:
            print(json.dumps(measure(arguments.worker, arguments.cache, arguments.warmup,
                                     arguments.batches, arguments.batch_size)))
        return
    sizes = [int(size) for size in arguments.sizes.split(",")]
    directory = Path(arguments.data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    rows = {}
    for size in sizes:
        folder = ensure_shapes(directory, size)
        for cache in ("none", "memory"):
            if cache == "memory" and size > arguments.memory_limit:
                continue
            rows[size, cache] = run_worker(arguments, folder, cache)
            print(f"{size:,} {cache}: {rows[size, cache]}", file=sys.stderr, flush=True)
    print(f"CNN teacher, {IMAGE_SIZE}×{IMAGE_SIZE} RGB shapes, batch {arguments.batch_size}, "
          f"{arguments.backend}, {os.cpu_count()} cores; samples/s over {arguments.batches} "
          f"batches after {arguments.warmup}\n")
    print("| images | data | peak RSS (MB) | load + checks (s) | samples / s "
          "| streamed / in memory |")
    print("|---|---|---|---|---|---|")
    for size in sizes:
        for cache, label in (("none", "streamed"), ("memory", "in memory")):
            row = rows.get((size, cache))
            if row is None:
                continue
            ratio = ""
            if cache == "none" and (size, "memory") in rows:
                ratio = f"{row['samples_per_s'] / rows[size, 'memory']['samples_per_s']:.2f}×"
            print(f"| {size:,} | {label} | {row['peak_rss_mb']:,.0f} | {row['load_s']:.1f} | "
                  f"{row['samples_per_s']:,.0f} | {ratio} |")
    smallest, largest = rows[sizes[0], "none"], rows[sizes[-1], "none"]
    growth = largest["peak_rss_mb"] / smallest["peak_rss_mb"]
    print(f"\nstreamed peak memory, {sizes[-1]:,} / {sizes[0]:,} images: {growth:.2f}× "
          f"(target ≤ 1.2×: {'met' if growth <= 1.2 else 'missed'})")
    ratios = [rows[size, "none"]["samples_per_s"] / rows[size, "memory"]["samples_per_s"]
              for size in sizes if (size, "memory") in rows]
    if ratios:
        print(f"streamed / in-memory samples/s: lowest {min(ratios):.2f}× "
              f"(target ≥ 0.9×: {'met' if min(ratios) >= 0.9 else 'missed'})")
    rates = run_worker(arguments, ensure_shapes(directory, sizes[0]), None)
    print(f"\nThe pipeline alone, {sizes[0]:,}-image folder, {arguments.batches} batches of "
          f"{arguments.batch_size} (decode 64×64 PNG, float32, batch):\n")
    print("| pipeline | images / s |")
    print("|---|---|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
