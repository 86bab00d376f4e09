"""Gradients on every backend, and the gradient noise scale against its analytic value."""

import keras
import numpy as np
import pytest

import callbacks
from callbacks.gradients import loss_and_gradients
from tests.helpers import WithSpareWeight


def linear_model(weights):
    model = keras.Sequential([keras.Input((len(weights),)),
                              keras.layers.Dense(1, use_bias=False)])
    model.compile(optimizer="sgd", loss="mse")
    model.layers[0].kernel.assign(np.asarray(weights, dtype="float32")[:, None])
    return model


def test_gradients_equal_the_closed_form_of_least_squares():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype("float32")
    y = rng.normal(size=(64, 1)).astype("float32")
    w = np.array([0.5, -1.0, 2.0], dtype="float32")
    loss, (gradient,) = loss_and_gradients(linear_model(w), x, y)
    residual = x @ w[:, None] - y
    assert loss == pytest.approx(float(np.mean(residual**2)), rel=1e-5)
    np.testing.assert_allclose(gradient, 2 * x.T @ residual / len(x), rtol=1e-4, atol=1e-6)


def test_unused_variables_have_no_or_zero_gradient_and_layer_state_is_kept():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.BatchNormalization()(WithSpareWeight()(inputs)))
    model.compile(loss="mse")
    before = [keras.ops.convert_to_numpy(v).copy() for v in model.non_trainable_variables]
    x = np.random.default_rng(0).normal(size=(4, 3))
    _, gradients = loss_and_gradients(model, x, np.zeros((4, 2)))
    by_name = {v.name: g for v, g in zip(model.trainable_variables, gradients)}
    assert np.abs(by_name["used"]).sum() > 0
    assert by_name["spare"] is None or not np.any(by_name["spare"])  # None, or zeros on JAX
    for saved, variable in zip(before, model.non_trainable_variables):
        np.testing.assert_array_equal(saved, keras.ops.convert_to_numpy(variable))


@pytest.mark.parametrize("noise, offset", [(1.0, 0.5), (0.3, 1.0)])
def test_noise_scale_matches_linear_regression_with_known_noise(noise, offset):
    # y = x·w* + ε, x ~ N(0, I_d), ε ~ N(0, σ²), evaluated at w = w* + δ. Per-example
    # gradients g = 2(x·δ − ε)x give G = 2δ and tr Σ = 4(|δ|²(d + 1) + σ²d), so
    # B_simple = (|δ|²(d + 1) + σ²d) / |δ|².
    d, samples = 4, 32768
    rng = np.random.default_rng(1)
    w_star = rng.normal(size=d)
    delta = np.full(d, offset / np.sqrt(d))
    x = rng.normal(size=(samples, d)).astype("float32")
    y = (x @ w_star + noise * rng.normal(size=samples)).astype("float32")[:, None]
    model = linear_model(w_star + delta)
    estimator = callbacks.GradientNoiseScale((x, y), small_batch_size=64, smoothing=0.0)
    estimator.set_model(model)
    gradient_norm, trace = estimator.estimate()
    squared_offset = float(delta @ delta)
    assert gradient_norm == pytest.approx(4 * squared_offset, rel=0.1)
    assert trace == pytest.approx(4 * (squared_offset * (d + 1) + noise**2 * d), rel=0.1)
    expected = (squared_offset * (d + 1) + noise**2 * d) / squared_offset
    assert estimator.update() == pytest.approx(expected, rel=0.15)


def test_noise_scale_is_logged_each_epoch():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(512, 4)).astype("float32")
    y = (x @ np.ones(4) + rng.normal(size=512)).astype("float32")[:, None]
    model = linear_model(np.zeros(4))
    history = model.fit(x, y, epochs=3, batch_size=32, verbose=0,
                        callbacks=[callbacks.GradientNoiseScale((x, y), small_batch_size=16)])
    scales = history.history["noise_scale"]
    assert len(scales) == 3 and all(np.isfinite(scales)) and scales[-1] > scales[0] > 0
