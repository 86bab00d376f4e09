"""Core ML conversion of each supported layer family, checked by the NumPy interpreter.

Conversion runs under TensorFlow, so these tests run in the TensorFlow pass of the suite; the
JAX and PyTorch passes export their own trained models through `python -m app export` in a
subprocess (`test_export.py`, `test_distillation.py`).
"""

import logging

import keras
import numpy as np
import pytest

from tests.helpers import BACKEND

logging.getLogger("coremltools").setLevel(logging.ERROR)
pytest.importorskip("coremltools")
pytestmark = pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="conversion runs under TensorFlow; other backends export through a subprocess")

from export import ProgramInterpreter, UnconvertibleModel, convert, verify_package  # noqa: E402


def approximate_gelu(x):
    return keras.activations.gelu(x, approximate=True)


def classifier(inputs, x, classes=4):
    """Closes a layer stack with a flatten and a logits layer."""
    if len(x.shape) > 2:
        x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(classes)(x))


def dense_family():
    inputs = keras.Input((10,))
    x = keras.layers.Dense(16, use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Dropout(0.3)(x)
    return classifier(inputs, x)


def convolution_family():
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(8, 3, dilation_rate=2, padding="same")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.SeparableConv2D(6, 3, padding="valid")(x)
    x = keras.layers.Conv2D(4, 1)(x)
    return classifier(inputs, keras.layers.GlobalAveragePooling2D()(x))


def transposed_convolution_family():
    inputs = keras.Input((5, 5, 3))
    x = keras.layers.Conv2DTranspose(4, 3, strides=2, padding="same")(inputs)
    x = keras.layers.Conv2DTranspose(4, 2, strides=2, padding="valid")(x)
    return classifier(inputs, x)


def sequence_convolution_family():
    inputs = keras.Input((12, 3))
    x = keras.layers.Conv1D(6, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.MaxPooling1D(2)(x)
    return classifier(inputs, x)


def pooling_family():
    inputs = keras.Input((9, 9, 2))
    x = keras.layers.MaxPooling2D(2)(inputs)
    x = keras.layers.AveragePooling2D(3, strides=1, padding="same")(x)
    return classifier(inputs, keras.layers.GlobalMaxPooling2D()(x))


def normalization_family():
    inputs = keras.Input((6, 6, 4))
    x = keras.layers.LayerNormalization()(inputs)
    x = keras.layers.GroupNormalization(groups=2)(x)
    x = keras.layers.Normalization(mean=[1.0, 2, 3, 4], variance=[1.0, 4, 9, 16])(x)
    return classifier(inputs, x)


def activation_family():
    inputs = keras.Input((8,))
    x = inputs
    for activation in ["relu", "silu", approximate_gelu, "elu", "selu", "tanh", "sigmoid",
                       "leaky_relu", "softplus", "relu6", "hard_sigmoid"]:
        x = keras.layers.Dense(8, activation=activation)(x)
    return classifier(inputs, x)


def resampling_family():
    inputs = keras.Input((4, 4, 2))
    x = keras.layers.UpSampling2D(2, interpolation="nearest")(inputs)
    x = keras.layers.UpSampling2D(2, interpolation="bilinear")(x)
    x = keras.layers.ZeroPadding2D(((1, 0), (2, 1)))(x)
    x = keras.layers.Cropping2D(((1, 1), (0, 2)))(x)
    x = keras.layers.Rescaling(1 / 4.0, offset=-0.5)(x)
    return classifier(inputs, keras.layers.Conv2D(2, 3, strides=2)(x))


def merge_and_reshape_family():
    inputs = keras.Input((6, 4))
    a = keras.layers.Dense(4)(inputs)
    b = keras.layers.Dense(4)(inputs)
    x = keras.layers.Concatenate()([keras.layers.Add()([a, b]), keras.layers.Multiply()([a, b]),
                                    keras.layers.Subtract()([a, b])])
    x = keras.layers.Permute((2, 1))(x)
    x = keras.layers.Reshape((4, 18))(x)
    return classifier(inputs, x)


def attention_family():
    inputs = keras.Input((6, 8))
    x = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)(inputs, inputs)
    x = keras.layers.LayerNormalization()(keras.layers.Add()([inputs, x]))
    return classifier(inputs, keras.layers.GlobalAveragePooling1D()(x))


def recurrent_family():
    inputs = keras.Input((5, 3))
    x = keras.layers.SimpleRNN(6, return_sequences=True, unroll=True)(inputs)
    x = keras.layers.GRU(6, return_sequences=True, unroll=True)(x)
    return classifier(inputs, keras.layers.LSTM(6, unroll=True)(x))


def project_models():
    from app.config import ModelConfig
    from app.tables.architectures import build_model

    return build_model(ModelConfig(architecture="cnn", size="student", activation="silu"),
                       (8, 8, 1), 10, mean=np.full(1, 5.0), variance=np.full(1, 30.0))


FAMILIES = [dense_family, convolution_family, transposed_convolution_family,
            sequence_convolution_family, pooling_family, normalization_family,
            activation_family, resampling_family, merge_and_reshape_family, attention_family,
            recurrent_family, project_models]


def exported(model, tmp_path, precision, x, **options):
    labels = [f"class {index}" for index in range(model.output.shape[-1])]
    path = tmp_path / "model.mlpackage"
    convert(model, labels, precision=precision, **options).save(str(path))
    interpreter = ProgramInterpreter.from_package(path)
    return interpreter, verify_package(interpreter, model, x, precision=precision)


def random_inputs(model, rows=6):
    return np.random.default_rng(0).normal(size=(rows, *model.input_shape[1:])).astype(np.float32)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda family: family.__name__)
def test_each_layer_family_converts_and_verifies_in_fp32(family, tmp_path):
    keras.utils.set_random_seed(0)
    model = family()
    x = random_inputs(model)
    _, report = exported(model, tmp_path, "fp32", x)
    assert report["passed"], report
    assert report["max_abs_logit_error"] < 1e-4
    assert report["top1_agreement"] == 1.0


@pytest.mark.parametrize("family", [convolution_family, attention_family, project_models],
                         ids=lambda family: family.__name__)
def test_fp16_packages_stay_within_the_fp16_tolerance(family, tmp_path):
    keras.utils.set_random_seed(0)
    model = family()
    interpreter, report = exported(model, tmp_path, "fp16", random_inputs(model, rows=16))
    assert report["passed"], report
    # The program really computes in fp16: its logits differ from Keras's a little.
    assert 1e-5 < report["max_abs_logit_error"] < 5e-2
    assert {"conv", "matmul", "linear"} & {op.op_type for op in interpreter.operations}


def test_enumerated_batch_sizes_are_accepted_and_verified(tmp_path):
    keras.utils.set_random_seed(0)
    model = project_models()
    interpreter, report = exported(model, tmp_path, "fp16", random_inputs(model, rows=11),
                                   batch_sizes=(1, 4))
    shapes = interpreter.spec.description.input[0].type.multiArrayType.enumeratedShapes.shapes
    assert [list(shape.shape) for shape in shapes] == [[1, 8, 8, 1], [4, 8, 8, 1]]
    assert report["passed"] and report["samples"] == 11


def test_exact_gelu_is_refused_naming_the_layer():
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(4, activation="gelu", name="hidden")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(hidden))
    with pytest.raises(UnconvertibleModel, match="layer 'hidden' uses the exact gelu.*approximate=True"):
        convert(model, ["a", "b"])


def test_recurrent_layers_must_be_unrolled():
    inputs = keras.Input((5, 3))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.LSTM(4, name="memory")(inputs)))
    with pytest.raises(UnconvertibleModel, match="layer 'memory' is recurrent.*unroll=True"):
        convert(model, ["a", "b"])


def test_a_failed_conversion_is_explained_in_keras_terms():
    inputs = keras.Input((4,))
    logits = keras.layers.Dense(3)(inputs)
    picked = keras.layers.Lambda(
        lambda t: keras.ops.one_hot(keras.ops.argmax(t, axis=-1), 3), name="pick")(logits)
    model = keras.Model(inputs, keras.layers.Dense(2)(picked), name="picker")
    # The layer that holds the failing operation is found by tracing each layer alone.
    with pytest.raises(UnconvertibleModel, match="layer 'pick' of 'picker' contains "
                                        "keras.ops.argmax inside the model"):
        convert(model, ["a", "b"])
