"""The NumPy ML-program interpreter, operation by operation, against Keras and NumPy.

Programs are built with coremltools' MIL builder (no TensorFlow needed), so these tests run on
every backend; the Keras references run on the backend under test.
"""

import logging

import keras
import numpy as np
import pytest

logging.getLogger("coremltools").setLevel(logging.ERROR)
ct = pytest.importorskip("coremltools")
from coremltools.converters.mil import Builder as mb  # noqa: E402
from coremltools.converters.mil.mil import mil_list  # noqa: E402

from export import ProgramInterpreter, UnsupportedOperation  # noqa: E402

RNG = np.random.default_rng(0)


def run(build, x):
    """Builds the one-input, one-output program `build(x)` and runs it on the array `x`."""

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS17)
    def program(x):
        return build(x)

    interpreter = ProgramInterpreter(program)
    return interpreter.run(x=x)[interpreter.output_names[0]]


def normal(*shape):
    return RNG.normal(size=shape).astype(np.float32)


def keras_value(tensor):
    return keras.ops.convert_to_numpy(tensor)


def channels_last(x):
    return np.moveaxis(x, 1, -1)


def channels_first(x):
    return np.moveaxis(x, -1, 1)


@pytest.mark.parametrize("strides,dilations,pad_type,groups", [
    ([1, 1], [1, 1], "valid", 1),
    ([2, 2], [1, 1], "same", 1),
    ([1, 2], [1, 1], "same", 1),
    ([1, 1], [2, 2], "same", 1),
    ([1, 1], [1, 1], "valid", 3),
])
def test_conv2d_matches_keras(strides, dilations, pad_type, groups):
    x, weight, bias = normal(2, 6, 9, 8), normal(6, 6 // groups, 3, 3), normal(6)
    got = run(lambda x: mb.conv(x=x, weight=weight, bias=bias, strides=strides,
                                dilations=dilations, pad_type=pad_type, groups=groups), x)
    if groups == 1:
        kernel = np.transpose(weight, (2, 3, 1, 0))  # (kh, kw, in, out)
        expected = keras_value(keras.ops.conv(channels_last(x), kernel, strides=strides,
                                              padding=pad_type, dilation_rate=dilations))
    else:  # grouped: one convolution per group, concatenated
        per_group = 6 // groups
        expected = np.concatenate([keras_value(keras.ops.conv(
            channels_last(x[:, g * per_group:(g + 1) * per_group]),
            np.transpose(weight[g * per_group:(g + 1) * per_group], (2, 3, 1, 0)),
            padding=pad_type)) for g in range(groups)], axis=-1)
    np.testing.assert_allclose(got, channels_first(expected) + bias.reshape(1, -1, 1, 1),
                               rtol=1e-4, atol=1e-4)


def test_conv_custom_and_same_lower_padding_match_explicit_padding():
    x, weight = normal(1, 2, 6, 6), normal(3, 2, 2, 2)
    custom = run(lambda x: mb.conv(x=x, weight=weight, pad_type="custom", pad=[1, 0, 2, 1]), x)
    padded = np.pad(x, [(0, 0), (0, 0), (1, 0), (2, 1)])
    valid = run(lambda x: mb.conv(x=x, weight=weight, pad_type="valid"), padded)
    np.testing.assert_allclose(custom, valid, rtol=1e-5, atol=1e-5)
    # An even kernel needs one padding row: `same` puts it after, `same_lower` before.
    same = run(lambda x: mb.conv(x=x, weight=weight, pad_type="same"), x)
    same_lower = run(lambda x: mb.conv(x=x, weight=weight, pad_type="same_lower"), x)
    after = run(lambda x: mb.conv(x=x, weight=weight, pad_type="valid"),
                np.pad(x, [(0, 0), (0, 0), (0, 1), (0, 1)]))
    before = run(lambda x: mb.conv(x=x, weight=weight, pad_type="valid"),
                 np.pad(x, [(0, 0), (0, 0), (1, 0), (1, 0)]))
    np.testing.assert_allclose(same, after, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(same_lower, before, rtol=1e-5, atol=1e-5)


def test_conv1d_matches_keras():
    x, weight = normal(2, 3, 11), normal(5, 3, 4)
    got = run(lambda x: mb.conv(x=x, weight=weight, strides=[2], pad_type="valid"), x)
    expected = keras.ops.conv(channels_last(x), np.transpose(weight, (2, 1, 0)), strides=2)
    np.testing.assert_allclose(got, channels_first(keras_value(expected)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("strides,pad_type", [([1, 1], "valid"), ([2, 2], "same"),
                                              ([2, 2], "valid")])
def test_conv_transpose_matches_keras(strides, pad_type):
    x, weight = normal(2, 4, 5, 5), normal(4, 3, 3, 3)  # (in, out, kh, kw)
    expected = keras_value(keras.ops.conv_transpose(
        channels_last(x), np.transpose(weight, (2, 3, 1, 0)), strides=strides,
        padding=pad_type))
    got = run(lambda x: mb.conv_transpose(x=x, weight=weight, strides=strides,
                                          pad_type=pad_type,
                                          output_shape=[2, 3, *expected.shape[1:3]]), x)
    np.testing.assert_allclose(got, channels_first(expected), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel,strides,pad_type", [([2, 2], [2, 2], "valid"),
                                                     ([3, 3], [2, 2], "same"),
                                                     ([3, 2], [1, 1], "valid")])
def test_pooling_matches_keras(kernel, strides, pad_type):
    x = normal(2, 3, 7, 6)
    maximum = run(lambda x: mb.max_pool(x=x, kernel_sizes=kernel, strides=strides,
                                        pad_type=pad_type), x)
    average = run(lambda x: mb.avg_pool(x=x, kernel_sizes=kernel, strides=strides,
                                        pad_type=pad_type, exclude_padding_from_average=True), x)
    expected_max = keras.ops.max_pool(channels_last(x), tuple(kernel), tuple(strides),
                                      padding=pad_type)
    np.testing.assert_allclose(maximum, channels_first(keras_value(expected_max)), rtol=1e-5)
    # The average over the real elements of each window (TensorFlow's `same`; Keras's torch
    # backend counts the padding, so the reference is NumPy's).
    np.testing.assert_allclose(average, average_of_real_elements(x, kernel, strides, pad_type),
                               rtol=1e-5, atol=1e-6)


def average_of_real_elements(x, kernel, strides, pad_type):
    padding = [(0, 0)] * 2
    for size, k, s in zip(x.shape[2:], kernel, strides):
        total = max((-(-size // s) - 1) * s + k - size, 0) if pad_type == "same" else 0
        padding.append((total // 2, total - total // 2))
    padded = np.pad(x.astype(np.float64), padding, constant_values=np.nan)
    windows = np.lib.stride_tricks.sliding_window_view(padded, kernel, axis=(2, 3))
    windows = windows[:, :, ::strides[0], ::strides[1]]
    return np.nanmean(windows, axis=(-2, -1))


def test_l2_pool_is_the_root_of_summed_squares():
    x = normal(1, 2, 4, 4)
    got = run(lambda x: mb.l2_pool(x=x, kernel_sizes=[2, 2], strides=[2, 2], pad_type="valid"), x)
    expected = np.sqrt((x**2).reshape(1, 2, 2, 2, 2, 2).sum(axis=(3, 5)))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_batch_norm_matches_keras():
    x = normal(3, 4, 5, 5)
    mean, variance = normal(4), np.abs(normal(4)) + 0.5
    gamma, beta = normal(4), normal(4)
    got = run(lambda x: mb.batch_norm(x=x, mean=mean, variance=variance, gamma=gamma, beta=beta,
                                      epsilon=1e-3), x)
    expected = keras.ops.batch_normalization(x, mean, variance, axis=1, offset=beta,
                                             scale=gamma, epsilon=1e-3)
    np.testing.assert_allclose(got, keras_value(expected), rtol=1e-4, atol=1e-5)


def test_instance_norm_normalises_each_sample_and_channel_over_space():
    x = normal(2, 3, 4, 5) * 3 + 1
    gamma, beta = normal(3), normal(3)
    got = run(lambda x: mb.instance_norm(x=x, gamma=gamma, beta=beta, epsilon=1e-5), x)
    mean = x.mean(axis=(2, 3), keepdims=True)
    std = np.sqrt(x.var(axis=(2, 3), keepdims=True) + 1e-5)
    np.testing.assert_allclose(got, (x - mean) / std * gamma.reshape(1, -1, 1, 1)
                               + beta.reshape(1, -1, 1, 1), rtol=1e-4, atol=1e-5)


def test_silu_matches_keras():
    x = normal(4, 7) * 4
    np.testing.assert_allclose(run(lambda x: mb.silu(x=x), x), keras_value(keras.ops.silu(x)),
                               rtol=1e-5, atol=1e-6)


def test_upsample_nearest_neighbor_repeats_pixels():
    x = normal(1, 2, 3, 4)
    got = run(lambda x: mb.upsample_nearest_neighbor(x=x, scale_factor_height=2,
                                                     scale_factor_width=3), x)
    np.testing.assert_array_equal(got, np.repeat(np.repeat(x, 2, axis=2), 3, axis=3))


def test_upsample_bilinear_matches_keras_resize():
    x = normal(1, 2, 3, 4)
    got = run(lambda x: mb.upsample_bilinear(x=x, scale_factor_height=2, scale_factor_width=2,
                                             align_corners=False, half_pixel_centers=True), x)
    expected = keras.ops.image.resize(channels_last(x), (6, 8), interpolation="bilinear",
                                      antialias=False)
    np.testing.assert_allclose(got, channels_first(keras_value(expected)), rtol=1e-4, atol=1e-5)


def test_upsample_bilinear_align_corners_keeps_the_corners():
    x = normal(1, 1, 3, 3)
    got = run(lambda x: mb.upsample_bilinear(x=x, scale_factor_height=2, scale_factor_width=2,
                                             align_corners=True), x)
    np.testing.assert_allclose(got[..., [0, -1], :][..., [0, -1]], x[..., [0, -1], :][..., [0, -1]],
                               rtol=1e-6)


@pytest.mark.parametrize("keep_dims", [True, False])
def test_reductions_work_on_numpy_2(keep_dims):
    # coremltools 9.0's own reduce_* evaluation fails on NumPy 2.4 (keepdims as np.bool_).
    x = normal(2, 3, 4)
    for op, reference in [(mb.reduce_mean, np.mean), (mb.reduce_sum, np.sum),
                          (mb.reduce_max, np.max), (mb.reduce_l2_norm, None)]:
        got = run(lambda x: op(x=x, axes=[1, 2], keep_dims=keep_dims), x)
        expected = (np.sqrt((x**2).sum(axis=(1, 2), keepdims=keep_dims)) if reference is None
                    else reference(x, axis=(1, 2), keepdims=keep_dims))
        np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_operations_with_value_inference_are_reused():
    x, weight, bias = normal(3, 5), normal(4, 5), normal(4)
    got = run(lambda x: mb.softmax(x=mb.linear(x=mb.relu(x=x), weight=weight, bias=bias),
                                   axis=-1), x)
    expected = keras.ops.softmax(np.maximum(x, 0) @ weight.T + bias, axis=-1)
    np.testing.assert_allclose(got, keras_value(expected), rtol=1e-5, atol=1e-6)


def test_fp16_programs_round_like_fp16():
    x = normal(2, 8)

    def build(x):
        return mb.cast(x=mb.mul(x=mb.cast(x=x, dtype="fp16"), y=np.float16(3.0)), dtype="fp32")

    got = run(build, x)
    np.testing.assert_array_equal(got, (x.astype(np.float16) * np.float16(3)).astype(np.float32))
    assert not np.array_equal(got, x * 3)


def test_classify_picks_the_most_probable_label():
    probabilities = np.array([[0.1, 0.7, 0.2]], dtype=np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3))], opset_version=ct.target.iOS17)
    def program(p):
        return mb.classify(probabilities=p, classes=mb.const(val=mil_list(["cat", "dog", "owl"])))

    interpreter = ProgramInterpreter(program)
    values = interpreter.run(p=probabilities)
    label, probs = (values[name] for name in interpreter.output_names)
    assert list(label) == ["dog"]
    np.testing.assert_array_equal(probs, probabilities)


def test_a_flexible_batch_is_bound_from_the_input():
    from coremltools.converters.mil.mil import get_new_symbol

    batch = get_new_symbol()

    @mb.program(input_specs=[mb.TensorSpec(shape=(batch, 2, 3))], opset_version=ct.target.iOS17)
    def program(x):
        shape = mb.shape(x=x)
        rows = mb.slice_by_size(x=shape, begin=[0], size=[1])
        return mb.reshape(x=x, shape=mb.concat(values=[rows, [6]], axis=0)), shape

    interpreter = ProgramInterpreter(program)
    for rows in (1, 5):
        x = normal(rows, 2, 3)
        values = interpreter.run(x=x)
        flat, shape = (values[name] for name in interpreter.output_names)
        np.testing.assert_array_equal(flat, x.reshape(rows, 6))
        assert list(shape) == [rows, 2, 3]


def test_unknown_operations_are_named():
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4, 2, 2))], opset_version=ct.target.iOS17)
    def program(x):
        return mb.space_to_depth(x=x, block_size=2)

    with pytest.raises(UnsupportedOperation, match="space_to_depth"):
        ProgramInterpreter(program).run(x=normal(1, 4, 2, 2))
