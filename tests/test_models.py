import keras
import numpy as np
import pytest

from app.config import ModelConfig
from app.tables.architectures import ARCHITECTURES, build_model
from models import build_cnn, build_mlp


def layer_types(model):
    return [type(layer).__name__ for layer in model.layers]


@pytest.mark.parametrize("architecture", ["mlp", "cnn"])
def test_students_are_much_smaller_than_teachers(architecture):
    teacher = build_model(ModelConfig(architecture=architecture, size="teacher"), (8, 8, 1), 10)
    student = build_model(ModelConfig(architecture=architecture, size="student"), (8, 8, 1), 10)
    assert student.count_params() * 5 < teacher.count_params()
    assert teacher.output_shape == student.output_shape == (None, 10)


@pytest.mark.parametrize("build", [lambda: build_mlp((6,), 4, width=8, depth=1),
                                   lambda: build_cnn((6, 6, 1), 4, filters=2, depth=1, width=8)])
def test_outputs_are_logits_without_softmax(build):
    model = build()
    x = np.random.default_rng(0).normal(size=(5, *model.input_shape[1:])) * 10
    # The output must be exactly the last layer's affine map of its input: no activation.
    logits_layer = model.get_layer("logits")
    hidden = keras.Model(model.input, logits_layer.input).predict(x, verbose=0)
    kernel, bias = (keras.ops.convert_to_numpy(weight) for weight in logits_layer.weights)
    np.testing.assert_allclose(model.predict(x, verbose=0), hidden @ kernel + bias,
                               rtol=1e-5, atol=1e-5)


def test_mlp_options_are_applied():
    model = build_mlp((8, 8, 1), 3, width=16, depth=3, activation="gelu",
                      initializer="glorot_uniform", normalization="layer", dropout=0.25,
                      l1=1e-4, l2=1e-3, mean=np.zeros(1), variance=np.ones(1))
    types = layer_types(model)
    assert types.count("Dense") == 4 and types.count("LayerNormalization") == 3
    assert types.count("Dropout") == 3 and "Normalization" in types and "Flatten" in types
    dense = model.get_layer("dense_0")
    assert dense.units == 16
    assert type(dense.kernel_initializer).__name__ == "GlorotUniform"
    assert dense.kernel_regularizer.get_config() == pytest.approx({"l1": 1e-4, "l2": 1e-3})
    assert model.get_layer("dense_0_act").get_config()["activation"] == "gelu"
    assert model.get_layer("dense_0_dropout").rate == 0.25
    # The L1/L2 penalties are part of the loss.
    model(np.ones((1, 8, 8, 1)))
    assert len(model.losses) == 4


def test_batch_normalization_replaces_the_bias():
    model = build_mlp((4,), 2, width=8, depth=2, normalization="batch", initializer="he_uniform")
    assert layer_types(model).count("BatchNormalization") == 2
    assert model.get_layer("dense_0").use_bias is False
    assert type(model.get_layer("dense_0").kernel_initializer).__name__ == "HeUniform"
    plain = build_mlp((4,), 2, width=8, depth=2, normalization="none")
    assert "BatchNormalization" not in layer_types(plain)
    assert plain.get_layer("dense_0").use_bias is True


def test_cnn_shapes_and_pooling_stop_at_one_pixel():
    model = build_cnn((8, 8, 1), 10, filters=4, depth=4, width=8)
    assert layer_types(model).count("MaxPooling2D") == 3  # 8 → 4 → 2 → 1, then no more
    assert model.get_layer("conv_3").filters == 32
    assert model.output_shape == (None, 10)
    with pytest.raises(ValueError, match="needs images"):
        build_cnn((64,), 10)


def test_standardization_is_inside_the_model():
    mean, variance = np.array([2.0, -1.0]), np.array([4.0, 1.0])
    model = build_mlp((2,), 2, width=4, depth=1, normalization="none", mean=mean, variance=variance)
    standardize = keras.Model(model.input, model.get_layer("standardize").output)
    out = keras.ops.convert_to_numpy(standardize(np.array([[4.0, 0.0]])))
    np.testing.assert_allclose(out, [[1.0, 1.0]], rtol=1e-6)


def test_config_overrides_the_preset():
    model = build_model(ModelConfig(architecture="mlp", size="student", width=7, depth=2), (5,), 3)
    assert [model.get_layer(f"dense_{i}").units for i in range(2)] == [7, 7]
    assert ARCHITECTURES.row("mlp").presets["student"]["width"] != 7
