"""Core ML export of the pretrained backbones at 224×224: size, operations, Neural Engine
findings, verification error and time.

Usage: `python bench/backbones.py [--backbones mobilenet_v3_small,...] [--compressions
none,int8,palettize6] [--input tensor|image] [--work-dir bench-data/backbones]`. ImageNet weights cannot be
downloaded here, so each backbone is built with random weights and its BatchNormalization
statistics set from a batch of random images (one forward pass in training mode with
momentum 0): its outputs then depend on its inputs, as a trained model's do, and the gate
can judge its decisions. Each classifier (10 classes, 224×224 RGB input) is saved as `.keras`
and exported with `python -m app export` in a fresh process per package, timed from start to
exit (conversion, compression, saving, reading back, verification on the documented number of
random inputs, and the Neural Engine report). With `--input image` the packages take an image
(`export --input image`) and are verified on random 0–255 pixels; with `tensor` (the
default), on standard normal inputs, which is what `export` checks a bare `.keras` file on.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SIZE = 224
# What `app.exporting.check_samples` gives a 224×224×3 input.
SAMPLES_AT_224 = 33


def save_calibrated(architecture, path):
    """Runs in a worker process (TensorFlow): builds, calibrates and saves the classifier."""
    import keras
    import numpy as np

    from app.config import ModelConfig
    from app.tables.architectures import build_model

    keras.utils.set_random_seed(0)
    model = build_model(ModelConfig(architecture=architecture, backbone_weights="none"),
                        (SIZE, SIZE, 3), 10)
    normalizations = [layer for layer in model._flatten_layers()
                      if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in normalizations:
        layer.momentum = 0.0
    images = np.random.default_rng(0).uniform(0, 255, (16, SIZE, SIZE, 3)).astype("float32")
    model(images, training=True)
    for layer in normalizations:
        layer.momentum = 0.99
    model.save(path)
    return {"parameters": int(model.count_params())}


def export(model_path, name, compression, image_input, environment):
    command = [sys.executable, "-m", "app", "export", str(model_path), "--name", name]
    if compression != "none":
        command += ["--compress", compression]
    if image_input:
        command += ["--input", "image"]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=REPO)
    seconds = time.perf_counter() - started
    folder = model_path.parent
    if result.returncode != 0:
        message = result.stderr.strip().splitlines()[-1]
        found = re.search(r"max \|Δ logit\| ([0-9.e+-]+), top-1 agreement ([0-9.]+) "
                          r"\(needs (.*?)\);", message)
        if found is None:
            return {"seconds": seconds, "failed": message}
        minimum = float(re.search(r"agreement >= ([0-9.]+)", found.group(3)).group(1))
        agreement = float(found.group(2))
        return {"seconds": seconds, "samples": None, "logit_error": float(found.group(1)),
                "agreement": agreement,
                "refused": "agreement" if agreement < minimum else "logits"}
    verification = json.loads((folder / f"{name}.verification.json").read_text())
    report = json.loads((folder / f"{name}.ane.json").read_text())
    size = sum(file.stat().st_size for file in (folder / f"{name}.mlpackage").rglob("*")
               if file.is_file())
    return {"seconds": seconds, "size_mb": size / 1e6, "samples": verification["samples"],
            "logit_error": verification["max_abs_logit_error"],
            "agreement": verification["top1_agreement"],
            "operations": report["counts"]["operations"],
            "findings": sorted({finding["rule"] for level in ("errors", "warnings")
                                for finding in report[level]})}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="mobilenet_v3_small,mobilenet_v3_large,"
                        "mobilenet_v2,efficientnet_b0,resnet50")
    parser.add_argument("--compressions", default="none,int8,palettize6")
    parser.add_argument("--input", choices=("tensor", "image"), default="tensor")
    parser.add_argument("--work-dir", default="bench-data/backbones")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.worker:
        print(json.dumps(save_calibrated(arguments.worker, arguments.path)))
        return
    work = Path(arguments.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    environment = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    rows = []
    for architecture in arguments.backbones.split(","):
        folder = work / architecture
        folder.mkdir(exist_ok=True)
        model_path = folder / f"{architecture}.keras"
        built = subprocess.run([sys.executable, __file__, "--worker", architecture, "--path",
                                str(model_path)], check=True, capture_output=True, text=True,
                               env=environment, cwd=REPO)
        parameters = json.loads(built.stdout.strip().splitlines()[-1])["parameters"]
        for compression in arguments.compressions.split(","):
            name = f"{architecture}-{compression}-{arguments.input}"
            for stale in folder.glob(f"{name}.*"):
                subprocess.run(["rm", "-rf", str(stale)], check=True)
            row = {"backbone": architecture, "parameters": parameters,
                   "compression": compression,
                   **export(model_path, name, compression, arguments.input == "image",
                            environment)}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    print(f"224×224 RGB, 10 classes, fp16 compute, {arguments.input} input, TensorFlow "
          f"conversion, {os.cpu_count()} cores; time: the whole `python -m app export` "
          "process\n")
    print("| backbone | parameters | compression | package (MB) | operations | verified on "
          "| max \\|Δ logit\\| | top-1 agreement | gate | export time (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        start = (f"| {row['backbone']} | {row['parameters']:,} | "
                 f"{row['compression'].replace('none', '–')} |")
        if "failed" in row:
            print(f"{start} failed: {row['failed']} | | | | | | {row['seconds']:.0f} |")
        elif "refused" in row:
            print(f"{start} – | – | {SAMPLES_AT_224} inputs | {row['logit_error']:.2g} | "
                  f"{row['agreement']:.3f} | refused ({row['refused']}) | {row['seconds']:.0f} |")
        else:
            print(f"{start} {row['size_mb']:.1f} | {row['operations']} | {row['samples']} inputs "
                  f"| {row['logit_error']:.2g} | {row['agreement']:.3f} | passed | "
                  f"{row['seconds']:.0f} |")


if __name__ == "__main__":
    main()
