"""Exporting a run's model as a verified Core ML package (`python -m app export`).

Converts the model (under TensorFlow, whatever backend trained it), optionally compresses its
weights, saves `<name>.mlpackage`, then checks the saved package on this machine: the NumPy
interpreter runs its program on held-out data against the Keras model (the gate), and a static
report rates its readiness for the Neural Engine. Everything is staged and moved into place
only when the checks pass, so a failed export leaves nothing behind.

```python
result = run_export("runs/mlp-student-20261122-101500", ExportOptions(compression="int8"))
result["package"], result["verification"]["max_abs_logit_error"]
```
"""

import dataclasses
import getpass
import logging
import shutil
from pathlib import Path

import numpy as np

from app import __version__
from app.errors import UserError
from app.reporting import write_json
from app.rundir import (BEST_MODEL_FILE, CONFIG_FILE, Staging, check_run_directory,
                        load_run_dataset, read_classes, read_metrics)

# Rows of random inputs that check a bare `.keras` file, which comes without held-out data.
RANDOM_CHECK_SAMPLES = 64
# Test samples an export is checked on: at most 2,000 (enough to find a wrong class), and at
# most 5 million input values in all, so that the NumPy interpreter verifies a MobileNet at
# 224×224 (33 samples) in well under a minute; at least 16.
CHECK_SAMPLES = 2000
CHECK_VALUES = 5_000_000
MIN_CHECK_SAMPLES = 16


def check_samples(sample_shape, limit=CHECK_SAMPLES):
    """How many samples of `sample_shape` an export is verified on (at most `limit`)."""
    values = max(1, int(np.prod(sample_shape)))
    return int(min(limit, max(MIN_CHECK_SAMPLES, CHECK_VALUES // values)))


class ExportCheckFailed(Exception):
    """The saved package failed verification, or `--strict` found Neural Engine errors."""


@dataclasses.dataclass
class ExportOptions:
    """What `export` writes.

    Args:
        precision: `"fp16"` (default; what the Neural Engine runs) or `"fp32"`.
        batch_sizes: the batch sizes the package accepts (more than one: enumerated shapes).
        compression: `None` or one of `export.COMPRESSIONS` (`sparse…` for pruned models).
        image_input: the package takes an image (`ct.ImageType`, batch 1) rather than a
            float32 tensor; its 0–255 pixels are scaled to the data's range.
        strict: fail when the Neural Engine report has errors.
        output_dir: where the package goes (default: beside the model).
        name: the package's name (default: the run's name, with the precision and
            compression when they are not the defaults).
        author, license, description, version: the package's metadata.
    """

    precision: str = "fp16"
    batch_sizes: tuple = (1,)
    compression: str | None = None
    image_input: bool = False
    strict: bool = False
    output_dir: str | None = None
    name: str | None = None
    author: str | None = None
    license: str = "not specified"
    description: str | None = None
    version: str = "1.0"


@dataclasses.dataclass
class ExportSource:
    """The model to export and what is known about it."""

    model_path: Path
    name: str
    class_labels: list
    check_inputs: np.ndarray
    check_description: str
    training: dict  # metadata of the training run (empty for a bare .keras file)
    # The largest value of the model's inputs, which a 255 pixel maps to (`--input image`);
    # `None` when the data are not pixel intensities.
    pixel_maximum: float | None = 255.0


def run_export(source, options):
    """Exports, verifies and reports; writes the package and its two JSON reports.

    Args:
        source: a run directory of `fit`, `tune` or `distill`, or a `.keras` file.
        options: `ExportOptions`.

    Returns:
        A dict with the `package` path, its `size_bytes` (and `uncompressed_size_bytes`),
        the `verification` and `neural_engine` reports.

    Raises:
        UserError: for a bad source or a missing dependency.
        export.ExportError: for a model that Core ML cannot convert (naming the layer).
        ExportCheckFailed: when the package fails verification (or `strict` finds errors);
            the result is then attached as `args[1]` and nothing is written.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        raise UserError("export converts through TensorFlow: run it with --backend tensorflow "
                        "(a model trained on any backend exports)")
    _import_coremltools()
    from export import convert, set_metadata

    import callbacks  # noqa: F401  (registers the project's objects for loading)
    from app.model_files import load_model_file

    found = _find_source(Path(source))
    name = options.name or _default_name(found.name, options)
    output_dir = Path(options.output_dir) if options.output_dir else found.model_path.parent
    package = output_dir / f"{name}.mlpackage"
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"--output {output_dir} is a file; pass a folder (it is created if "
                        "missing)")
    if package.exists():
        raise UserError(f"{package} already exists; remove it or pass --name/--output")
    model = load_model_file(found.model_path, compile=False)
    _check_classifier(model, found, options)
    deployment_target = _deployment_target(model, options.compression)

    mlmodel = convert(model, found.class_labels, precision=options.precision,
                      batch_sizes=options.batch_sizes, image_scale=_image_scale(found, options),
                      deployment_target=deployment_target)
    set_metadata(mlmodel, **_metadata(found, model, options))
    output_dir.mkdir(parents=True, exist_ok=True)
    with Staging(output_dir, merge=True) as staging:
        result = _save_and_check(mlmodel, model, found, options, staging.folder / package.name)
        result["package"] = str(package)
        failures = _failures(result, options.strict)
        if failures:
            raise ExportCheckFailed("; ".join(failures), result)
        staging.commit()
    return result


def _deployment_target(model, compression):
    """The package's deployment target; refuses sparse storage for a model without zeros."""
    from export.compression import (JOINT_COMPRESSIONS, JOINT_DEPLOYMENT_TARGET,
                                    MIN_WEIGHT_SPARSITY)
    from export.converter import DEPLOYMENT_TARGET

    if compression and compression.startswith("sparse"):
        from callbacks import model_sparsity

        zeros = model_sparsity(model)["overall"]
        if zeros < MIN_WEIGHT_SPARSITY:
            raise UserError(
                f"--compress {compression} stores a pruned model's zeros, but {zeros:.1%} of "
                f"this model's kernel weights are zero (sparse storage pays from "
                f"{MIN_WEIGHT_SPARSITY:.0%}): prune it first (python -m app prune RUN_DIR "
                f"--sparsity 0.75) or use int8 or palettize4")
    if compression in JOINT_COMPRESSIONS:
        print(f"--compress {compression} uses iOS 18 / macOS 15 operations: the package's "
              f"deployment target is {JOINT_DEPLOYMENT_TARGET}")
        return JOINT_DEPLOYMENT_TARGET
    return DEPLOYMENT_TARGET


def _save_and_check(mlmodel, model, found, options, path):
    """Compresses (optionally) and saves the package at `path`, reads it back, verifies it and
    rates it; writes both reports beside it. Returns the result without its final path."""
    import coremltools

    from export import (ProgramInterpreter, UnsupportedOperation, check_compressed_weights,
                        compress, outputs_probabilities, package_size, readiness_report,
                        verify_package)

    uncompressed_size = uncompressed_program = None
    if options.compression:
        uncompressed = path.with_name("uncompressed.mlpackage")
        mlmodel.save(str(uncompressed))
        uncompressed_size = package_size(uncompressed)
        uncompressed_program = ProgramInterpreter.from_package(uncompressed)
        shutil.rmtree(uncompressed)
        mlmodel = compress(mlmodel, options.compression)
    mlmodel.save(str(path))
    # The program the package was saved from: the reference of the same compression.
    reference = ProgramInterpreter.from_mlmodel(mlmodel) if options.compression else None
    try:
        interpreter = ProgramInterpreter.from_package(path)
    except Exception as error:  # the protobuf and blob readers raise many kinds
        raise ExportCheckFailed(f"the saved package cannot be read back "
                                f"({type(error).__name__}: {error})", None) from None
    check_inputs, package_inputs = found.check_inputs, None
    if options.image_input:
        check_inputs, package_inputs = as_images(check_inputs, _image_scale(found, options))
    try:
        verification = verify_package(interpreter, model, check_inputs,
                                      options.precision, options.compression,
                                      outputs_probabilities=outputs_probabilities(model),
                                      package_inputs=package_inputs, reference=reference)
    except UnsupportedOperation as error:
        raise UserError(f"the package holds an operation the NumPy verifier cannot run "
                        f"({error}); it was not written") from None
    verification["data"] = found.check_description
    if uncompressed_program is not None:
        weights = check_compressed_weights(interpreter, uncompressed_program, options.compression)
        verification["weights"] = weights
        verification["passed"] = verification["passed"] and weights["passed"]
    result = {
        "size_bytes": package_size(path),
        "uncompressed_size_bytes": uncompressed_size,
        "precision": options.precision,
        "compression": options.compression,
        "batch_sizes": list(options.batch_sizes),
        "input": "image" if options.image_input else "tensor",
        "coremltools": coremltools.__version__,
        "verification": verification,
        "neural_engine": readiness_report(interpreter),
    }
    name = path.stem
    write_json(result["verification"], path.with_name(f"{name}.verification.json"))
    write_json(result["neural_engine"], path.with_name(f"{name}.ane.json"))
    return result


def _image_scale(found, options):
    if not options.image_input:
        return None
    if found.pixel_maximum is None:
        raise UserError(f"--input image needs a model trained on images; {found.name}'s "
                        f"data are not pixel intensities (drop --input image)")
    return found.pixel_maximum / 255.0


def as_images(x, scale):
    """The images a package with an image input sees for the model inputs `x`, and the
    model inputs those images give.

    Pixels are whole numbers from 0 to 255, so `x` is rounded to them first; the Keras
    model then gets exactly what Core ML computes from the image (`pixels · scale`).

    Returns:
        `(model_inputs, images)`: `(samples, height, width, channels)` float32 model inputs
        and `(samples, channels, height, width)` pixels, as the program takes them.
    """
    pixels = np.clip(np.rint(np.asarray(x, dtype=np.float64) / scale), 0, 255)
    return (pixels * scale).astype(np.float32), pixels.transpose(0, 3, 1, 2).astype(np.float32)


def _import_coremltools():
    # Its import warns that the Core ML runtime is missing: true on Linux, and expected.
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    try:
        import coremltools
    except ImportError:
        raise UserError("export needs coremltools: pip install 'efficient-learning[coreml]'") \
            from None
    return coremltools


def _find_source(path):
    if path.suffix == ".keras":
        if not path.is_file():
            raise UserError(f"{path} does not exist; pass a .keras file or a run directory")
        return ExportSource(model_path=path, name=path.stem, class_labels=None,
                            check_inputs=None, check_description="random inputs", training={})
    run_dir = check_run_directory(path)
    return _run_source(run_dir)


def _run_source(run_dir):
    from app.config import load_config

    config = load_config(run_dir / CONFIG_FILE)
    metrics = read_metrics(run_dir)
    dataset = load_run_dataset(run_dir, config, remedy="export the run's best.keras instead")
    samples = check_samples(dataset.input_shape)
    training = {
        "source_run": run_dir.resolve().name,
        "config_hash": metrics.get("config_hash"),
        "test_accuracy": metrics.get("test", {}).get("accuracy"),
        "training_backend": metrics.get("backend"),
        "data": dataset.description,
        "data_fingerprint": metrics.get("data_fingerprint"),
    }
    if "distillation" in metrics:
        distillation = metrics["distillation"]
        training.update(teacher_run=distillation["teacher_run"],
                        temperature=distillation["temperature"], alpha=distillation["alpha"])
    return ExportSource(
        pixel_maximum=_pixel_maximum(config, dataset),
        model_path=run_dir / BEST_MODEL_FILE,
        name=run_dir.resolve().name,
        class_labels=read_classes(run_dir),
        check_inputs=np.asarray(dataset.x_test[:samples]),
        check_description=f"test split of {dataset.description}"
        + (f" (first {samples})" if len(dataset.x_test) > samples else ""),
        training={key: value for key, value in training.items() if value is not None},
    )


def _pixel_maximum(config, dataset):
    """What a 255 pixel is in the run's data: 255 for image folders; for arrays of images
    (digits: 0–16), the training split's largest value; `None` for other data."""
    if Path(config.data.source).is_dir():
        return 255.0
    low, high = dataset.value_range
    return float(high) if len(dataset.input_shape) == 3 and low >= 0 and high > 0 else None


def _default_name(base, options):
    suffixes = [options.precision if options.precision != "fp16" else None, options.compression,
                "image" if options.image_input else None]
    return "-".join([base, *(suffix for suffix in suffixes if suffix)])


def _check_classifier(model, found, options):
    # `outputs`, not `output`: a Sequential model loaded from .keras has never been called,
    # and Keras gives it no `output` then.
    if len(model.inputs) != 1 or len(model.outputs) != 1 or len(model.outputs[0].shape) != 2:
        raise UserError(f"{found.model_path} must be a classifier with one input and one "
                        f"(batch, classes) logits output to export; its outputs are "
                        f"{[tuple(output.shape) for output in model.outputs]}")
    classes = int(model.outputs[0].shape[-1])
    if found.class_labels is None:
        found.class_labels = [str(index) for index in range(classes)]
    if found.check_inputs is None:
        shape = (check_samples(model.input_shape[1:], RANDOM_CHECK_SAMPLES),
                 *model.input_shape[1:])
        random = np.random.default_rng(0)
        # A bare model's images are taken to be 0–255 pixels.
        found.check_inputs = (random.integers(0, 256, size=shape) if options.image_input
                              else random.normal(size=shape)).astype(np.float32)
    if len(found.class_labels) != classes:
        raise UserError(f"the model has {classes} logits but the run names "
                        f"{len(found.class_labels)} classes")


def _metadata(found, model, options):
    accuracy = found.training.get("test_accuracy")
    description = options.description or (
        f"{model.name}: classifies {len(found.class_labels)} classes"
        + (f" ({found.training['data']})" if "data" in found.training else "")
        + (f"; test accuracy {accuracy:.4f}" if accuracy is not None else ""))
    return {
        "author": options.author or _user_name(),
        "license": options.license,
        "description": description,
        "version": options.version,
        "user_defined": {"efficient_learning.version": __version__,
                         "precision": options.precision,
                         "compression": options.compression or "none",
                         **found.training},
    }


def _user_name():
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in some containers
        return "unknown"


def _failures(result, strict):
    verification = result["verification"]
    failures = []
    if not verification["passed"] and verification["criterion"].startswith("cannot"):
        failures.append(f"verification failed: {verification['criterion']} (the model's "
                        "outputs do not depend on its inputs: train it first)")
    elif not verification.get("weights", {"passed": True})["passed"]:
        problems = verification["weights"]["failures"]
        failures.append(f"verification failed: the compressed weights are not the model's "
                        f"({len(problems)} wrong, e.g. {problems[0]})")
    elif not verification["passed"]:
        failures.append(
            f"verification failed: max |Δ logit| {verification['max_abs_logit_error']:.3g}, "
            f"top-1 agreement {verification['top1_agreement']:.4f} "
            f"(needs {verification['criterion']})")
    errors = result["neural_engine"]["errors"]
    if strict and errors:
        failures.append(f"--strict: {len(errors)} Neural Engine errors "
                        f"({', '.join(error['rule'] for error in errors)})")
    return failures
