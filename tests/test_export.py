"""`python -m app export`: packages, metadata, compression, the verification gate and --strict.

A model trained on the backend under test is exported through a subprocess (export always
converts under TensorFlow); the in-process tests need the TensorFlow pass of the suite.
"""

import json
import logging
import shutil

import numpy as np
import pytest

from tests.helpers import BACKEND, FAST, run_subprocess, without_tensorflow_startup_lines

logging.getLogger("coremltools").setLevel(logging.ERROR)
ct = pytest.importorskip("coremltools")

from export import ProgramInterpreter, package_size  # noqa: E402
from export.verification import class_labels  # noqa: E402

tensorflow_only = pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="in-process export needs the TensorFlow backend (the subprocess tests cover others)")
STUDENT = [*FAST, "model.size=student", "output.timestamp=false"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A CNN student trained on the backend under test, on the bundled digits."""
    from app.cli import main

    runs = tmp_path_factory.mktemp("export") / "runs"
    arguments = [f"--set={item}" for item in [*STUDENT, "model.architecture=cnn",
                                              f"output.dir={runs}", "output.name=student"]]
    assert main(["fit", *arguments]) == 0
    return runs / "student"


@pytest.fixture(scope="module")
def uncompressed_size(trained_run, tmp_path_factory):
    """The size in bytes of the trained run's package exported without compression."""
    from app.cli import main

    run_dir = copy_of(trained_run, tmp_path_factory.mktemp("uncompressed"))
    assert main(["export", str(run_dir)]) == 0
    return package_size(run_dir / "student.mlpackage")


def copy_of(run_dir, tmp_path):
    target = tmp_path / run_dir.name
    shutil.copytree(run_dir, target)
    return target


@pytest.mark.slow
def test_a_model_trained_on_this_backend_exports_with_labels_and_metadata(trained_run, tmp_path):
    run_dir = copy_of(trained_run, tmp_path)
    result = run_subprocess(["-m", "app", "export", str(run_dir), "--batch", "1,4",
                             "--author", "Ada", "--license", "MIT"], timeout=600)
    assert result.returncode == 0, result.stderr
    assert without_tensorflow_startup_lines(result.stderr).count("error") == 0
    package = run_dir / "student.mlpackage"
    verification = json.loads((run_dir / "student.verification.json").read_text())
    report = json.loads((run_dir / "student.ane.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())

    assert verification["passed"] and verification["samples"] == metrics["samples"]["test"]
    assert verification["max_abs_logit_error"] < 5e-2
    assert verification["top1_agreement"] >= 0.99
    assert report["errors"] == [] and "MLComputePlan" in report["note"]
    assert "verification      passed" in result.stdout

    spec = ct.utils.load_spec(str(package))
    metadata = spec.description.metadata
    assert (metadata.author, metadata.license, metadata.versionString) == ("Ada", "MIT", "1.0")
    assert f"test accuracy {metrics['test']['accuracy']:.4f}" in metadata.shortDescription
    user = dict(metadata.userDefined)
    assert user["config_hash"] == metrics["config_hash"]
    assert float(user["test_accuracy"]) == pytest.approx(metrics["test"]["accuracy"])
    assert user["training_backend"] == BACKEND
    assert spec.description.predictedFeatureName == "classLabel"
    assert spec.description.input[0].type.multiArrayType.dataType == \
        ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
    classes = json.loads((run_dir / "classes.json").read_text())
    assert class_labels(ProgramInterpreter.from_package(package)) == [str(c) for c in classes]


@pytest.mark.slow
def test_export_refuses_another_backend_and_bad_sources(tmp_path):
    result = run_subprocess(["-m", "app", "--backend", "jax", "export", str(tmp_path)])
    assert result.returncode == 2
    assert "export converts through TensorFlow" in result.stderr
    result = run_subprocess(["-m", "app", "export", str(tmp_path / "missing.keras")])
    assert result.returncode == 2
    assert without_tensorflow_startup_lines(result.stderr).strip() == \
        f"error: {tmp_path / 'missing.keras'} does not exist; pass a .keras file or a run directory"


@pytest.mark.slow
@tensorflow_only
@pytest.mark.parametrize("mode", ["int8", "palettize6", "palettize4"])
def test_compression_shrinks_the_package_and_keeps_the_decisions(mode, trained_run, tmp_path,
                                                                 run_cli, uncompressed_size):
    run_dir = copy_of(trained_run, tmp_path)
    code, out, err = run_cli("export", str(run_dir), "--compress", mode)
    assert code == 0, err
    verification = json.loads((run_dir / f"student-{mode}.verification.json").read_text())
    assert verification["passed"] and verification["compression"] == mode
    interpreter = ProgramInterpreter.from_package(run_dir / f"student-{mode}.mlpackage")
    decompressors = {op.op_type for op in interpreter.operations
                     if op.op_type.startswith("constexpr_")}
    assert decompressors == ({"constexpr_affine_dequantize"} if mode == "int8"
                             else {"constexpr_lut_to_dense"})
    assert f"({mode}; uncompressed" in out
    assert package_size(run_dir / f"student-{mode}.mlpackage") < uncompressed_size


def weight_regions(blob):
    """The byte ranges of the stored arrays of a weight blob.

    Each array's metadata starts with the sentinel 0xDEADBEEF, then its dtype (uint32), size
    in bytes (uint64) and the offset of its data (uint64).
    """
    sentinel = (0xDEADBEEF).to_bytes(4, "little")
    regions, start = [], blob.find(sentinel)
    while start >= 0:
        size = int.from_bytes(blob[start + 8:start + 16], "little")
        offset = int.from_bytes(blob[start + 16:start + 24], "little")
        regions.append(range(offset, offset + size))
        start = blob.find(sentinel, start + 4)
    return regions


def zero_the_weights(blob):
    """The weight blob with every weight's data set to zero (its headers intact)."""
    blob = bytearray(blob)
    for region in weight_regions(blob):
        blob[region.start:region.stop] = bytes(len(region))
    return bytes(blob)


def truncated(blob):
    return blob[:len(blob) // 2]


@pytest.mark.slow
@tensorflow_only
@pytest.mark.parametrize("corrupt,message", [
    (zero_the_weights, "error: verification failed: max |Δ logit|"),
    (truncated, "error: the saved package cannot be read back"),
])
def test_a_corrupted_package_fails_the_gate_and_nothing_is_written(
        corrupt, message, trained_run, tmp_path, run_cli, monkeypatch):
    run_dir = copy_of(trained_run, tmp_path)
    load = ProgramInterpreter.from_package.__func__

    def corrupt_then_load(cls, path):
        weights = next((path / "Data").rglob("weight.bin"))
        weights.write_bytes(corrupt(weights.read_bytes()))
        return load(cls, path)

    monkeypatch.setattr(ProgramInterpreter, "from_package", classmethod(corrupt_then_load))
    before = sorted(path.name for path in run_dir.iterdir())
    code, out, err = run_cli("export", str(run_dir))
    assert code == 1
    error = err.strip().splitlines()[-1]  # after coremltools' progress bars
    assert error.startswith(message) and error.endswith("nothing was written"), err
    assert sorted(path.name for path in run_dir.iterdir()) == before


@pytest.mark.slow
@tensorflow_only
def test_strict_fails_on_neural_engine_errors(trained_run, tmp_path, run_cli):
    run_dir = copy_of(trained_run, tmp_path)
    before = sorted(path.name for path in run_dir.iterdir())
    code, out, err = run_cli("export", str(run_dir), "--precision", "fp32", "--strict")
    assert code == 1
    assert "operations compute in fp32" in out
    assert "--strict: 1 Neural Engine errors (fp32_compute)" in err
    assert sorted(path.name for path in run_dir.iterdir()) == before
    # Without --strict the same export is written, with the error in its report.
    code, out, err = run_cli("export", str(run_dir), "--precision", "fp32")
    assert code == 0, err
    report = json.loads((run_dir / "student-fp32.ane.json").read_text())
    assert [error["rule"] for error in report["errors"]] == ["fp32_compute"]
    verification = json.loads((run_dir / "student-fp32.verification.json").read_text())
    assert verification["max_abs_logit_error"] < 1e-4


@tensorflow_only
def test_a_keras_file_exports_beside_itself_checked_on_random_inputs(trained_run, tmp_path,
                                                                    run_cli):
    model_path = tmp_path / "digits.keras"
    shutil.copy(trained_run / "best.keras", model_path)
    code, out, err = run_cli("export", str(model_path), "--name", "Digits")
    assert code == 0, err
    assert (tmp_path / "Digits.mlpackage").is_dir()
    verification = json.loads((tmp_path / "Digits.verification.json").read_text())
    assert verification["data"] == "random inputs" and verification["passed"]
    # A second export to the same name is refused before any work.
    code, out, err = run_cli("export", str(model_path), "--name", "Digits")
    assert code == 2 and "already exists" in err


def test_export_without_tensorflow_says_what_to_install(run_cli, monkeypatch, tmp_path):
    import app.backend

    installed = app.backend.is_installed
    monkeypatch.setattr(app.backend, "is_installed",
                        lambda name: name != "tensorflow" and installed(name))
    code, out, err = run_cli("export", str(tmp_path))
    assert code == 2
    assert err == ("error: export converts through TensorFlow and coremltools: "
                   "pip install 'efficient-learning[coreml]'\n")


@tensorflow_only
def test_an_unconvertible_layer_is_one_line_and_writes_nothing(run_cli, tmp_path):
    import keras

    inputs = keras.Input((4,), name="input")
    hidden = keras.layers.Dense(8, activation="gelu", name="hidden")(inputs)
    keras.Model(inputs, keras.layers.Dense(3, name="logits")(hidden)).save(tmp_path / "m.keras")
    code, out, err = run_cli("export", str(tmp_path / "m.keras"))
    assert code == 2 and out == ""
    assert err.startswith("error: layer 'hidden' uses the exact gelu") and err.count("\n") == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["m.keras"]


@tensorflow_only
def test_a_model_ending_in_softmax_gets_no_second_softmax(run_cli, tmp_path):
    import keras
    import numpy as np

    inputs = keras.Input((6,), name="input")
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(hidden))
    model.layers[-1].set_weights([w * 8 for w in model.layers[-1].get_weights()])  # confident
    model.save(tmp_path / "softmax.keras")
    code, out, err = run_cli("export", str(tmp_path / "softmax.keras"))
    assert code == 0, err
    verification = json.loads((tmp_path / "softmax.verification.json").read_text())
    # A second softmax flattens confident probabilities toward 1/4: off by far more than 0.02.
    assert verification["passed"] and verification["max_abs_probability_error"] < 2e-2
    interpreter = ProgramInterpreter.from_package(tmp_path / "softmax.mlpackage")
    x = np.random.default_rng(0).normal(size=(1, 6)).astype(np.float32)
    probabilities = interpreter.run(input=x)["classLabel_probs"]
    np.testing.assert_allclose(np.asarray(probabilities).reshape(-1),
                               model.predict(x, verbose=0)[0], atol=2e-2)


@tensorflow_only
def test_a_sequential_model_loaded_from_keras_exports(run_cli, tmp_path):
    import keras

    model = keras.Sequential([keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])
    model.build((None, 5))
    model.save(tmp_path / "sequential.keras")
    code, out, err = run_cli("export", str(tmp_path / "sequential.keras"))
    assert code == 0, err
    assert json.loads((tmp_path / "sequential.verification.json").read_text())["passed"]


@tensorflow_only
def test_an_exact_gelu_inside_a_custom_activation_is_reported_against_its_layer(run_cli,
                                                                              tmp_path):
    import keras

    @keras.saving.register_keras_serializable(package="tests")
    def smooth(x):
        return keras.activations.gelu(x, approximate=False) * 1.5

    inputs = keras.Input((4,), name="input")
    hidden = keras.layers.Dense(8, activation=smooth, name="hidden")(inputs)
    keras.Model(inputs, keras.layers.Dense(3, name="logits")(hidden), name="custom").save(
        tmp_path / "custom.keras")
    code, out, err = run_cli("export", str(tmp_path / "custom.keras"))
    message = err.strip().splitlines()[-1]  # after coremltools's progress bars
    assert code == 2 and message.startswith(
        "error: layer 'hidden' of 'custom' contains the exact gelu (an erf); use "), err


@tensorflow_only
def test_a_model_with_constant_outputs_cannot_verify_decisions(run_cli, tmp_path):
    import keras

    inputs = keras.Input((5,), name="input")
    logits = keras.layers.Dense(3, kernel_initializer="zeros", bias_initializer="ones")(inputs)
    keras.Model(inputs, logits).save(tmp_path / "constant.keras")
    code, out, err = run_cli("export", str(tmp_path / "constant.keras"))
    assert code == 1
    assert "verification failed: cannot verify decisions: constant outputs" in err
    assert not (tmp_path / "constant.mlpackage").exists()


@pytest.mark.slow
@tensorflow_only
def test_an_image_input_package_takes_pixels_and_is_verified_through_them(trained_run, tmp_path,
                                                                          run_cli):
    import keras
    import numpy as np

    run_dir = copy_of(trained_run, tmp_path)
    code, out, err = run_cli("export", str(run_dir), "--input", "image")
    assert code == 0, err
    assert "image input, batch 1" in out and "verification      passed" in out
    package = run_dir / "student-image.mlpackage"
    spec = ct.utils.load_spec(str(package))
    image = spec.description.input[0]
    assert image.name == "image" and (image.type.imageType.height,
                                      image.type.imageType.width) == (8, 8)
    assert image.type.imageType.colorSpace == ct.proto.FeatureTypes_pb2.ImageFeatureType.GRAYSCALE
    verification = json.loads((run_dir / "student-image.verification.json").read_text())
    assert verification["passed"] and verification["top1_agreement"] >= 0.98

    # Digits run from 0 to 16: a white pixel (255) must reach the model as 16.
    pixels = np.random.default_rng(1).integers(0, 256, size=(1, 1, 8, 8)).astype(np.float32)
    probabilities = ProgramInterpreter.from_package(package).run(image=pixels)["classLabel_probs"]
    model = keras.saving.load_model(run_dir / "best.keras")
    expected = keras.ops.softmax(model.predict(pixels.transpose(0, 2, 3, 1) * 16 / 255,
                                               verbose=0))
    np.testing.assert_allclose(np.asarray(probabilities).reshape(-1),
                               np.asarray(expected)[0], atol=2e-2)


@tensorflow_only
def test_an_image_input_needs_batch_one_and_an_image_model(trained_run, tmp_path, run_cli):
    import keras

    run_dir = copy_of(trained_run, tmp_path)
    code, out, err = run_cli("export", str(run_dir), "--input", "image", "--batch", "1,4")
    assert code == 2 and err.strip().splitlines()[-1] == (
        "error: an image input takes one image at a time; got batch sizes 1,4: export it "
        "with batch 1")
    model = keras.Sequential([keras.layers.Dense(3)])
    model.build((None, 5))
    model.save(tmp_path / "features.keras")
    code, out, err = run_cli("export", str(tmp_path / "features.keras"), "--input", "image")
    assert code == 2 and "an image input needs a model that takes fixed (height, width, 1 or 3 " \
        "channels) inputs; this one takes (5,)" in err
    assert not list(tmp_path.glob("*.mlpackage")) and not list(run_dir.glob("*.mlpackage"))


@tensorflow_only
def test_an_output_that_is_a_file_is_refused_before_converting(trained_run, tmp_path, run_cli,
                                                               monkeypatch):
    import export

    def never(*args, **kwargs):
        raise AssertionError("converted before checking --output")

    monkeypatch.setattr(export, "convert", never)  # run_export imports it from the package
    (tmp_path / "taken").write_text("a file")
    code, out, err = run_cli("export", str(trained_run), "--output", str(tmp_path / "taken"))
    assert code == 2 and err.strip().splitlines()[-1] == (
        f"error: --output {tmp_path / 'taken'} is a file; pass a folder (it is created if "
        "missing)")


@pytest.mark.slow
@tensorflow_only
def test_an_rgb_model_takes_an_rgb_image(run_cli, tmp_path):
    import keras

    inputs = keras.Input((12, 16, 3), name="input")
    scaled = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)  # the model's own preprocessing
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(scaled))
    keras.Model(inputs, keras.layers.Dense(3)(features)).save(tmp_path / "rgb.keras")
    code, out, err = run_cli("export", str(tmp_path / "rgb.keras"), "--input", "image")
    assert code == 0, err
    image = ct.utils.load_spec(str(tmp_path / "rgb-image.mlpackage")).description.input[0]
    assert image.type.imageType.colorSpace == ct.proto.FeatureTypes_pb2.ImageFeatureType.RGB
    assert (image.type.imageType.height, image.type.imageType.width) == (12, 16)
    verification = json.loads((tmp_path / "rgb-image.verification.json").read_text())
    assert verification["passed"] and verification["data"] == "random inputs"


def pruned_copy(run_dir, tmp_path, sparsity=0.8):
    """A copy of the run whose kernels have their smallest `sparsity` set to zero."""
    import keras

    from callbacks import magnitude_masks, prunable_weights

    target = copy_of(run_dir, tmp_path)
    model = keras.saving.load_model(target / "best.keras")
    kernels = prunable_weights(model)
    masks = magnitude_masks([kernel.numpy() for kernel in kernels], sparsity)
    for kernel, mask in zip(kernels, masks):
        kernel.assign(kernel.numpy() * mask)
    (target / "best.keras").unlink()
    model.save(target / "best.keras")
    return target


def flip_bytes(blob, count=200, seed=0):
    """The weight blob with `count` bytes of its largest stored array inverted (the values of
    the largest kernel: a sparse package's mask is smaller, and the reader itself rejects a
    mask whose bits no longer count the values)."""
    blob = bytearray(blob)
    largest = max(weight_regions(blob), key=len)
    for position in np.random.default_rng(seed).choice(largest, size=count, replace=False):
        blob[position] ^= 0xFF
    return bytes(blob)


@pytest.mark.slow
@tensorflow_only
@pytest.mark.parametrize("mode", ["sparse", "sparse+palettize4", "sparse+int8"])
def test_a_pruned_model_exports_sparse_and_the_weights_are_checked(mode, trained_run, tmp_path,
                                                                   run_cli):
    run_dir = pruned_copy(trained_run, tmp_path)
    code, out, err = run_cli("export", str(run_dir), "--compress", mode)
    assert code == 0, err
    verification = json.loads((run_dir / f"student-{mode}.verification.json").read_text())
    assert verification["passed"] and verification["weights"]["passed"]
    assert verification["weights"]["weights"] >= 3 and "checked against the model's: all" in out
    report = json.loads((run_dir / f"student-{mode}.ane.json").read_text())
    assert [round(weight["sparsity"], 1) for weight in report["weights"]] == [0.8] * len(
        report["weights"])
    spec = ct.utils.load_spec(str(run_dir / f"student-{mode}.mlpackage"))
    joint = mode != "sparse"
    assert ("iOS 18" in out) == joint
    assert spec.specificationVersion == (9 if joint else 8)  # iOS 18 / iOS 17
    if mode == "sparse":  # lossless: judged as fp16
        assert verification["max_abs_logit_error"] < 5e-2


@tensorflow_only
def test_sparse_export_of_a_dense_model_says_to_prune_first(trained_run, tmp_path, run_cli):
    code, _, err = run_cli("export", str(copy_of(trained_run, tmp_path)), "--compress", "sparse")
    assert code == 2 and "prune it first (python -m app prune RUN_DIR" in err


@pytest.mark.slow
@tensorflow_only
@pytest.mark.parametrize("mode", ["int8", "sparse", "palettize4", "sparse+palettize4",
                                  "sparse+int8"])
def test_flipped_bytes_in_compressed_weights_fail_the_gate(mode, trained_run, tmp_path, run_cli,
                                                           monkeypatch):
    # 60 % zeros: a 4-bit palette's indices then outweigh the mask (see `flip_bytes`).
    run_dir = (pruned_copy(trained_run, tmp_path, sparsity=0.6) if mode.startswith("sparse")
               else copy_of(trained_run, tmp_path))
    load = ProgramInterpreter.from_package.__func__

    def corrupt_then_load(cls, path):
        if not path.name.startswith("uncompressed"):  # the package itself
            weights = next((path / "Data").rglob("weight.bin"))
            weights.write_bytes(flip_bytes(weights.read_bytes()))
        return load(cls, path)

    monkeypatch.setattr(ProgramInterpreter, "from_package", classmethod(corrupt_then_load))
    before = sorted(path.name for path in run_dir.iterdir())
    code, _, err = run_cli("export", str(run_dir), "--compress", mode)
    assert code == 1, err
    error = err.strip().splitlines()[-1]
    assert error.startswith("error: verification failed: the compressed weights are not the "
                            "model's") and error.endswith("nothing was written"), err
    assert sorted(path.name for path in run_dir.iterdir()) == before


@pytest.mark.slow
@tensorflow_only
def test_a_flipped_uncompressed_weight_of_a_compressed_package_fails_on_logits(
        trained_run, tmp_path, run_cli, monkeypatch):
    """A bias is too small to compress; the weight check does not see it, the comparison with
    the program the package was saved from does."""
    run_dir = copy_of(trained_run, tmp_path)
    load = ProgramInterpreter.from_package.__func__

    def corrupt_then_load(cls, path):
        if not path.name.startswith("uncompressed"):
            biases = [op.outputs[0].val for op in load(cls, path).operations
                      if op.op_type == "const" and isinstance(op.outputs[0].val, np.ndarray)
                      and op.outputs[0].val.dtype == np.float16 and op.outputs[0].val.size >= 8]
            weights = next((path / "Data").rglob("weight.bin"))
            blob = weights.read_bytes()
            start = blob.find(biases[-1].tobytes())
            assert start > 0
            weights.write_bytes(blob[:start] + bytes(b ^ 0xFF for b in blob[start:start + 4])
                                + blob[start + 4:])
        return load(cls, path)

    monkeypatch.setattr(ProgramInterpreter, "from_package", classmethod(corrupt_then_load))
    code, _, err = run_cli("export", str(run_dir), "--compress", "int8")
    assert code == 1, err
    error = err.strip().splitlines()[-1]
    assert error.startswith("error: verification failed: max |Δ logit|")
    assert "against the compressed program" in error and error.endswith("nothing was written")
