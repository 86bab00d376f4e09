"""Core ML package sizes and verification errors per precision and weight compression.

Usage: `python bench/export.py [--epochs 30]`. Trains the CNN teacher and the CNN student on
the bundled digits (TensorFlow backend, where conversion runs), exports each at fp32 and fp16
and, at fp16, with int8, 6-bit and 4-bit palettized weights, and checks every saved package
with the NumPy interpreter on the 270 test images: package size (and its ratio to fp32), max
|Δ logit| and |Δ probability| against Keras, top-1 agreement, and the verification time.
"""

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
logging.getLogger("coremltools").setLevel(logging.ERROR)

VARIANTS = [("fp32", None), ("fp16", None), ("fp16", "int8"), ("fp16", "palettize6"),
            ("fp16", "palettize4")]


def trained_model(size, epochs, directory):
    from app.config import load_config
    from app.data import load_dataset
    from app.engine import resolve_config, train_and_test

    config = resolve_config(load_config(overrides=[
        "model.architecture=cnn", f"model.size={size}", f"training.epochs={epochs}",
        "training.verbose=0"]), f"cnn-{size}")
    dataset = load_dataset(config.data, seed=config.seed)
    staging = Path(directory) / size
    staging.mkdir()
    _, metrics = train_and_test(config, dataset, staging / "best.keras")
    import keras

    return keras.saving.load_model(staging / "best.keras", compile=False), dataset, metrics


def measure(model, dataset, directory):
    from export import (ProgramInterpreter, compress, convert, package_size,
                        verify_package)

    labels = [str(label) for label in dataset.class_names]
    rows = []
    for precision, compression in VARIANTS:
        mlmodel = convert(model, labels, precision=precision)
        if compression:
            mlmodel = compress(mlmodel, compression)
        path = Path(directory) / f"{model.name}-{precision}-{compression}.mlpackage"
        mlmodel.save(str(path))
        started = time.perf_counter()
        report = verify_package(ProgramInterpreter.from_package(path), model, dataset.x_test,
                                precision, compression)
        rows.append({**report, "compression": compression or "none",
                     "bytes": package_size(path), "seconds": time.perf_counter() - started})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    arguments = parser.parse_args()
    print("| model | parameters | precision | weights | size KiB | vs fp32 | max abs Δ logit "
          "| max abs Δ prob | top-1 agreement | passed | verify s |")
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---|---:|")
    with tempfile.TemporaryDirectory() as directory:
        for size in ("teacher", "student"):
            model, dataset, metrics = trained_model(size, arguments.epochs, directory)
            rows = measure(model, dataset, directory)
            for row in rows:
                print(f"| cnn {size} (test acc {metrics['test']['accuracy']:.3f}) "
                      f"| {metrics['parameters']:,} | {row['precision']} | {row['compression']} "
                      f"| {row['bytes'] / 1024:.1f} | {row['bytes'] / rows[0]['bytes']:.2f} "
                      f"| {row['max_abs_logit_error']:.2g} "
                      f"| {row['max_abs_probability_error']:.2g} "
                      f"| {row['top1_agreement']:.4f} | {'yes' if row['passed'] else 'NO'} "
                      f"| {row['seconds']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
