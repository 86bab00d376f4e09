"""NumPy implementations of the MIL operations that coremltools cannot evaluate itself.

coremltools gives 113 of its 168 MIL operations a `value_inference` (NumPy) method; the
layers of a typical vision student (convolution, pooling, normalisation, SiLU, upsampling)
and the classifier head are among those without. Each kernel here takes the operation (for
its constant attributes) and its evaluated inputs, and follows the MIL specification in
`coremltools/converters/mil/mil/ops/defs/`. Tensors are channels-first (`N, C, *spatial`).

Each kernel is registered for the operations it evaluates with `@kernel(...)`; adding one is a
function here, its decorator, and a test against Keras or NumPy.

```python
KERNELS["silu"](op, {"x": np.array([-1.0, 0.0, 2.0])})
```
"""

import itertools

import numpy as np

from export.coreml_private import aggregated_pad

# MIL operation type → the function that evaluates it: `kernel(op, inputs) → value(s)`.
KERNELS = {}


def kernel(*op_types):
    """Registers the decorated function as the NumPy kernel of the MIL `op_types`."""
    def register(function):
        for op_type in op_types:
            if op_type in KERNELS:
                raise ValueError(f"two kernels for the MIL operation {op_type!r}")
            KERNELS[op_type] = function
        return function
    return register


@kernel("conv")
def conv(op, inputs):
    """`conv`: N-d convolution with strides, dilations, groups and MIL's padding modes."""
    # float64 before multiplying: NumPy has no BLAS for fp16, whose matrix products crawl.
    x, weight = (np.asarray(inputs[name], dtype=np.float64) for name in ("x", "weight"))
    strides, dilations = _spatial(inputs, "strides", x), _spatial(inputs, "dilations", x)
    groups = int(inputs.get("groups", 1))
    kernel = weight.shape[2:]
    x = _pad(x, _padding(inputs, kernel, x.shape[2:], strides, dilations), value=0.0)
    out_size = [(size - (k - 1) * d - 1) // s + 1
                for size, k, s, d in zip(x.shape[2:], kernel, strides, dilations)]
    batch, channels = x.shape[:2]
    per_group_in = channels // groups
    per_group_out = weight.shape[0] // groups
    pixels = int(np.prod(out_size))
    result = np.zeros((batch, groups, per_group_out, pixels), dtype=np.float64)
    # One batched matrix product per kernel offset, all groups at once: a depthwise
    # convolution (a group per channel) costs as many products as a dense one.
    for offset in itertools.product(*(range(k) for k in kernel)):
        window = x[(slice(None), slice(None),
                    *_strided(offset, out_size, strides, dilations))]
        grouped = window.reshape(batch, groups, per_group_in, pixels)
        w = weight[(slice(None), slice(None), *offset)].reshape(groups, per_group_out,
                                                                per_group_in)
        result += np.matmul(w, grouped)
    return _with_bias(result.reshape(batch, weight.shape[0], *out_size), inputs.get("bias"))


@kernel("conv_transpose")
def conv_transpose(op, inputs):
    """`conv_transpose`: the gradient of `conv` with respect to its input."""
    x, weight = (np.asarray(inputs[name], dtype=np.float64) for name in ("x", "weight"))
    strides, dilations = _spatial(inputs, "strides", x), _spatial(inputs, "dilations", x)
    groups = int(inputs.get("groups", 1))
    kernel = weight.shape[2:]
    per_group_in = x.shape[1] // groups
    per_group_out = weight.shape[1]
    full = [(size - 1) * s + (k - 1) * d + 1
            for size, k, s, d in zip(x.shape[2:], kernel, strides, dilations)]
    result = np.zeros((x.shape[0], per_group_out * groups, *full), dtype=np.float64)
    for offset in itertools.product(*(range(k) for k in kernel)):
        target = (slice(None), slice(None),
                  *_strided(offset, x.shape[2:], strides, dilations))
        for group in range(groups):
            inside = x[:, group * per_group_in:(group + 1) * per_group_in]
            w = weight[group * per_group_in:(group + 1) * per_group_in, :, *offset]
            # Basic slicing gives views, so this adds into `result`.
            result[target][:, group * per_group_out:(group + 1) * per_group_out] += np.einsum(
                "nc...,co->no...", inside, w)
    out_size = op.outputs[0].shape[2:]
    # The padding of the forward convolution is cropped from the full result.
    crops = [begin for begin, _ in _split_padding(
        inputs, len(full), lambda: [f - size for f, size in zip(full, out_size)])]
    result = result[(slice(None), slice(None),
                     *(slice(begin, begin + size) for begin, size in zip(crops, out_size)))]
    return _with_bias(result, inputs.get("bias"))


@kernel("max_pool")
def max_pool(op, inputs):
    """`max_pool`: padding never wins the maximum."""
    return _pool(inputs, reducer="max")


@kernel("avg_pool")
def avg_pool(op, inputs):
    """`avg_pool`: `exclude_padding_from_average` divides by the real elements only."""
    return _pool(inputs, reducer="avg")


@kernel("l2_pool")
def l2_pool(op, inputs):
    """`l2_pool`: the square root of the sum of squares in each window."""
    return np.sqrt(_pool({**inputs, "x": np.square(inputs["x"])}, reducer="sum"))


@kernel("batch_norm")
def batch_norm(op, inputs):
    """`batch_norm` with frozen statistics, over the channel axis 1."""
    x = inputs["x"]
    shape = (1, -1) + (1,) * (x.ndim - 2)
    scale = 1.0 / np.sqrt(inputs["variance"].astype(np.float64) + inputs.get("epsilon", 1e-5))
    return _scale_and_shift((x - inputs["mean"].reshape(shape)) * scale.reshape(shape), inputs)


@kernel("instance_norm")
def instance_norm(op, inputs):
    """`instance_norm`: each sample's channel normalised over its spatial axes."""
    x = inputs["x"].astype(np.float64)
    axes = tuple(range(2, x.ndim))
    normalised = (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(
        x.var(axis=axes, keepdims=True) + inputs.get("epsilon", 1e-5))
    return _scale_and_shift(normalised, inputs)


@kernel("silu")
def silu(op, inputs):
    """`silu`: x·sigmoid(x)."""
    x = inputs["x"].astype(np.float64)
    return x / (1.0 + np.exp(-x))


@kernel("upsample_nearest_neighbor")
def upsample_nearest_neighbor(op, inputs):
    """`upsample_nearest_neighbor` by integer factors on the last two axes."""
    height, width = (_integer_factor(inputs, name) for name in
                     ("scale_factor_height", "scale_factor_width"))
    return np.repeat(np.repeat(inputs["x"], height, axis=-2), width, axis=-1)


@kernel("upsample_bilinear")
def upsample_bilinear(op, inputs):
    """`upsample_bilinear` on the last two axes, with `align_corners` or half-pixel centres."""
    x = inputs["x"].astype(np.float64)
    out_height, out_width = op.outputs[0].shape[-2:]
    align = bool(inputs.get("align_corners", False))
    half_pixel = bool(inputs.get("half_pixel_centers", not align))
    rows = _source_coordinates(x.shape[-2], out_height, align, half_pixel)
    columns = _source_coordinates(x.shape[-1], out_width, align, half_pixel)
    return _interpolate(_interpolate(x, rows, axis=-2), columns, axis=-1)


@kernel("classify")
def classify(op, inputs):
    """`classify`: the most probable class label of each row, and the probabilities."""
    probabilities = np.asarray(inputs["probabilities"])
    classes = np.asarray(inputs["classes"])
    rows = probabilities.reshape(-1, probabilities.shape[-1])
    return classes[rows.argmax(axis=-1)], probabilities


@kernel("reshape")
def reshape(op, inputs):
    """`reshape`, where `0` copies the input's size and `-1` is inferred. coremltools' own
    evaluation reads the shapes the program declares, which are symbols for a flexible
    batch."""
    x = inputs["x"]
    shape = [x.shape[axis] if size == 0 else int(size)
             for axis, size in enumerate(np.asarray(inputs["shape"]).reshape(-1))]
    return x.reshape(shape)


REDUCERS = {
    "reduce_sum": np.sum,
    "reduce_mean": np.mean,
    "reduce_max": np.max,
    "reduce_min": np.min,
    "reduce_prod": np.prod,
    "reduce_l1_norm": lambda x, axis, keepdims: np.sum(np.abs(x), axis=axis, keepdims=keepdims),
    "reduce_l2_norm": lambda x, axis, keepdims: np.sqrt(
        np.sum(np.square(x), axis=axis, keepdims=keepdims)),
    "reduce_sum_square": lambda x, axis, keepdims: np.sum(np.square(x), axis=axis,
                                                          keepdims=keepdims),
    "reduce_log_sum": lambda x, axis, keepdims: np.log(np.sum(x, axis=axis, keepdims=keepdims)),
    "reduce_log_sum_exp": lambda x, axis, keepdims: np.log(
        np.sum(np.exp(x), axis=axis, keepdims=keepdims)),
}


@kernel(*REDUCERS)
def reduce(op, inputs):
    """`reduce_*`. coremltools's own `value_inference` passes `keep_dims` as `np.bool_`,
    which NumPy 2.4 rejects, so the reductions are evaluated here."""
    axes = inputs.get("axes")
    axis = None if axes is None else tuple(int(a) for a in np.atleast_1d(axes))
    keepdims = bool(inputs.get("keep_dims", False))
    return REDUCERS[op.op_type](inputs["x"].astype(np.float64), axis=axis, keepdims=keepdims)


def _spatial(inputs, name, x):
    value = inputs.get(name)
    return [1] * (x.ndim - 2) if value is None else [int(v) for v in value]


def _padding(inputs, kernel, input_size, strides, dilations):
    """(before, after) padding per spatial axis of a convolution or pooling window."""
    return _split_padding(inputs, len(kernel), lambda: aggregated_pad(
        str(inputs["pad_type"]), list(kernel), list(input_size), list(strides),
        list(dilations)))


def _split_padding(inputs, rank, same_totals):
    """(before, after) per spatial axis for MIL's `pad_type`: `custom` reads `pad`, `valid`
    is none, and `same` (extra row after) or `same_lower` (extra row before) split the
    totals that `same_totals()` computes."""
    pad_type = str(inputs.get("pad_type", "valid"))
    if pad_type == "custom":
        pad = [int(p) for p in inputs["pad"]]
        return list(zip(pad[0::2], pad[1::2]))
    if pad_type == "valid":
        return [(0, 0)] * rank
    if pad_type == "same":
        return [(total // 2, total - total // 2) for total in same_totals()]
    return [(total - total // 2, total // 2) for total in same_totals()]  # same_lower


def _pad(x, padding, value):
    return np.pad(x, [(0, 0), (0, 0), *padding], constant_values=value)


def _strided(offset, out_size, strides, dilations):
    """Slices that pick, for one kernel offset, the input element of every output position."""
    return tuple(slice(k * d, k * d + s * (size - 1) + 1, s)
                 for k, size, s, d in zip(offset, out_size, strides, dilations))


def _with_bias(result, bias):
    if bias is not None:
        result = result + bias.reshape((1, -1) + (1,) * (result.ndim - 2))
    return result


def _scale_and_shift(normalised, inputs):
    """A normalisation's optional per-channel `gamma` and `beta`."""
    shape = (1, -1) + (1,) * (normalised.ndim - 2)
    if inputs.get("gamma") is not None:
        normalised = normalised * inputs["gamma"].reshape(shape)
    if inputs.get("beta") is not None:
        normalised = normalised + inputs["beta"].reshape(shape)
    return normalised


def _pool(inputs, reducer):
    x = inputs["x"].astype(np.float64)
    kernel = [int(k) for k in inputs["kernel_sizes"]]
    strides = _spatial(inputs, "strides", x)
    ones = [1] * len(kernel)
    padding = _padding(inputs, kernel, x.shape[2:], strides, ones)
    if bool(inputs.get("ceil_mode", False)):
        # Extra padding at the end so that a last, partial window exists.
        padding = [(begin, end + s - 1) for (begin, end), s in zip(padding, strides)]
    fill = -np.inf if reducer == "max" else 0.0
    padded = _pad(x, padding, value=fill)
    real = _pad(np.ones_like(x), padding, value=0.0)
    out_size = [(size - k) // s + 1 for size, k, s in zip(padded.shape[2:], kernel, strides)]
    windows = []
    counts = []
    for offset in itertools.product(*(range(k) for k in kernel)):
        where = (slice(None), slice(None), *_strided(offset, out_size, strides, ones))
        windows.append(padded[where])
        counts.append(real[where])
    stacked = np.stack(windows)
    if reducer == "max":
        return stacked.max(axis=0)
    total = stacked.sum(axis=0)
    if reducer == "sum":
        return total
    if bool(inputs.get("exclude_padding_from_average", False)):
        return total / np.stack(counts).sum(axis=0)
    return total / np.prod(kernel)


def _integer_factor(inputs, name):
    factor = float(inputs.get(name, 1))
    if not factor.is_integer():
        raise NotImplementedError(f"upsampling by the fractional factor {factor}")
    return int(factor)


def _source_coordinates(in_size, out_size, align_corners, half_pixel):
    positions = np.arange(out_size, dtype=np.float64)
    if align_corners and out_size > 1:
        return positions * (in_size - 1) / (out_size - 1)
    scale = in_size / out_size
    if half_pixel:
        return np.clip((positions + 0.5) * scale - 0.5, 0, in_size - 1)
    return np.clip(positions * scale, 0, in_size - 1)


def _interpolate(x, coordinates, axis):
    low = np.floor(coordinates).astype(int)
    high = np.minimum(low + 1, x.shape[axis] - 1)
    fraction = coordinates - low
    shape = [1] * x.ndim
    shape[axis] = -1
    fraction = fraction.reshape(shape)
    return (np.take(x, low, axis=axis) * (1 - fraction)
            + np.take(x, high, axis=axis) * fraction)
