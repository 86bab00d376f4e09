"""Core ML compression against accuracy: dense, quantized, palettized, sparse and joint packages.

Usage: `python bench/compression.py [--models cnn,mobilenet]`.

For the CNN teacher and MobileNetV3-Small (no pretrained weights: none can be downloaded here;
its body sees the digits scaled to 32×32) on the bundled digits, this trains the dense model
with `fit`, prunes it to 75 % and 90 % with `prune` (fine-tuned, not rewound), sets the
normalization statistics of each from training images (`recalibrate_batch_norm`), and exports
every variant in this process (TensorFlow): fp32 and fp16, int8, 6- and 4-bit palettes of the
dense model;
sparse and sparse + 4-bit palette (iOS 18) of each pruned model. For each package: its size
relative to the dense fp32 package, the test accuracy of the package run by the NumPy
interpreter against the test accuracy of its Keras model, and the export gate's verdict
(logits and, for compressed packages, every compressed weight).
"""

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
logging.getLogger("coremltools").setLevel(logging.ERROR)

MODELS = {
    "cnn": {"fit": ["model.architecture=cnn", "model.size=teacher", "training.epochs=20"],
            "prune_epochs": 8, "description": "CNN teacher, digits"},
    "mobilenet": {"fit": ["model.architecture=mobilenet_v3_small", "model.backbone_weights=none",
                          "model.input_size=[32,32]", "training.epochs=10"],
                  "prune_epochs": 4, "description": "MobileNetV3-Small (32×32 body input), digits"},
}
DENSE_VARIANTS = [("fp32", None), ("fp16", None), ("fp16", "int8"), ("fp16", "palettize6"),
                  ("fp16", "palettize4")]
SPARSE_VARIANTS = [("fp16", "sparse"), ("fp16", "sparse+palettize4")]


def app(*arguments, backend="jax"):
    environment = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "app", *arguments], check=True, cwd=REPO,
                   env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def train_and_prune(name, settings, runs):
    arguments = ["fit", "--set", "training.verbose=0", "--set", f"output.dir={runs}",
                 "--set", f"output.name={name}", "--set", "output.timestamp=false"]
    for override in settings["fit"]:
        arguments += ["--set", override]
    app(*arguments)
    recalibrate_batch_norm(runs / name)
    for sparsity in (0.75, 0.9):
        app("prune", str(runs / name), "--sparsity", str(sparsity),
            "--epochs", str(settings["prune_epochs"]))
        recalibrate_batch_norm(runs / f"{name}-pruned{round(sparsity * 100)}")
    pruned = {f"{percent} % sparse": runs / f"{name}-pruned{percent}" for percent in (75, 90)}
    return {"dense": runs / name, **pruned}


def recalibrate_batch_norm(run_dir, samples=512):
    """Sets the moving statistics of every BatchNormalization layer of the run's model from
    `samples` training images (one pass in training mode with momentum 0) and saves it back.

    MobileNetV3's normalization keeps 0.999 of its moving statistics per step: after a few
    hundred steps from scratch they are still the initial ones, and the model in inference
    mode gives every image the same class.
    """
    import keras

    import callbacks  # noqa: F401  (registers the schedule and optimizer the file holds)
    from app.config import load_config
    from app.model_files import load_model_file
    from app.rundir import load_run_dataset

    config = load_config(run_dir / "config.yaml")
    dataset = load_run_dataset(run_dir, config)
    model = load_model_file(run_dir / "best.keras")
    layers = [layer for layer in model._flatten_layers()
              if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.0
    model(dataset.x_train[:samples].astype("float32"), training=True)
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum
    model.save(run_dir / "best.keras")


def measure(run_dir, variants, work):
    import numpy as np

    from app.config import load_config
    from app.feeding import evaluation_inputs
    from app.model_files import load_model_file
    from app.rundir import load_run_dataset
    from export import (ProgramInterpreter, check_compressed_weights, compress, convert,
                        outputs_probabilities, package_size, verify_package)
    from export.compression import JOINT_COMPRESSIONS, JOINT_DEPLOYMENT_TARGET
    from export.converter import DEPLOYMENT_TARGET
    from export.verification import run_classifier

    config = load_config(run_dir / "config.yaml")
    dataset = load_run_dataset(run_dir, config)
    model = load_model_file(run_dir / "best.keras", compile=False)
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    keras_accuracy = float(np.mean(np.argmax(model.predict(
        evaluation_inputs(dataset.x_test, dataset.y_test, config)["x"], verbose=0), -1)
        == dataset.y_test))
    labels = [str(label) for label in dataset.class_names]
    rows = []
    for precision, compression in variants:
        target = JOINT_DEPLOYMENT_TARGET if compression in JOINT_COMPRESSIONS else DEPLOYMENT_TARGET
        mlmodel = convert(model, labels, precision=precision, deployment_target=target)
        name = f"{run_dir.name}-{precision}-{compression or 'none'}"
        plain_path = work / f"{name}-uncompressed.mlpackage"
        mlmodel.save(str(plain_path))
        path, reference = plain_path, None
        if compression:
            path = work / f"{name}.mlpackage"
            compressed = compress(mlmodel, compression)
            compressed.save(str(path))
            reference = ProgramInterpreter.from_mlmodel(compressed)
        interpreter = ProgramInterpreter.from_package(path)
        report = verify_package(interpreter, model, dataset.x_test, precision, compression,
                                outputs_probabilities=outputs_probabilities(model),
                                reference=reference)
        if compression:
            weights = check_compressed_weights(interpreter,
                                               ProgramInterpreter.from_package(plain_path),
                                               compression)
            report["passed"] = report["passed"] and weights["passed"]
            report["criterion"] += "; weights: " + ("all match" if weights["passed"]
                                                    else "; ".join(weights["failures"]))
        _, probabilities, _ = run_classifier(interpreter, dataset.x_test)
        rows.append({"precision": precision, "compression": compression or "none",
                     "bytes": package_size(path), "keras_accuracy": keras_accuracy,
                     "package_accuracy": float(np.mean(probabilities.argmax(-1)
                                                       == dataset.y_test)),
                     "logit_error": report["max_abs_logit_error"],
                     "agreement": report["top1_agreement"], "criterion": report["criterion"],
                     "passed": report["passed"]})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn,mobilenet")
    arguments = parser.parse_args()
    for name in arguments.models.split(","):
        settings = MODELS[name]
        with tempfile.TemporaryDirectory() as folder:
            work = Path(folder)
            runs = train_and_prune(name, settings, work / "runs")
            rows = []
            for label, run_dir in runs.items():
                variants = DENSE_VARIANTS if label == "dense" else SPARSE_VARIANTS
                rows += [{"model": label, **row} for row in measure(run_dir, variants, work)]
        reference = next(row["bytes"] for row in rows if row["model"] == "dense"
                         and row["precision"] == "fp32")
        print(f"\n{settings['description']}")
        print("| model | package | size | vs fp32 | Keras test acc. | package test acc. | "
              "max abs logit error | gate |\n|---|---|---|---|---|---|---|---|")
        for row in rows:
            package = row["precision"] + ("" if row["compression"] == "none"
                                          else f" + {row['compression']}")
            print(f"| {row['model']} | {package} | {row['bytes'] / 1024:,.0f} KiB | "
                  f"{row['bytes'] / reference:.3f}× | {row['keras_accuracy']:.4f} | "
                  f"{row['package_accuracy']:.4f} | {row['logit_error']:.3g} | "
                  f"{'passed' if row['passed'] else 'FAILED: ' + row['criterion']} |")
        print(json.dumps(rows), file=sys.stderr)


if __name__ == "__main__":
    main()
