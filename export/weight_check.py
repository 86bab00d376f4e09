"""The check of a compressed package's weights against the uncompressed program's.

Top-1 agreement alone lets corrupted compressed weights through: 200 flipped bytes in an int8
or 4-bit package still agree on the test decisions. So every weight that a `constexpr_*`
operation decompresses is compared with the same weight in the uncompressed program (the
Keras weights, converted), under the rule of its compression:

| compression | each decompressed weight must be |
|---|---|
| `sparse` | the weight itself (to fp16 rounding), so zero exactly where it is zero |
| `int8` | within half a quantization step of it (the step: its channel's scale) |
| `palettize6`, `palettize4` | the palette entry nearest to it, among the entries in use |
| `sparse+…` | zero wherever it is zero; the others as above (which may round one to zero) |

A byte flipped in the indices, the palette, the quantized values, the scales, the mask or the
kept values breaks one of these rules. The check reads neither Keras nor the k-means:
the rules hold for any correct compression.

```python
report = check_compressed_weights(ProgramInterpreter.from_package(package),
                                  ProgramInterpreter.from_package(uncompressed), "int8")
report["passed"], report["failures"]
```
"""

import numpy as np

# Relative slack for fp16 rounding of the stored weights, scales and palettes.
FP16_SLACK = 2e-3


def check_compressed_weights(package, uncompressed, compression):
    """Compares the weights that `package` decompresses with `uncompressed`'s constants.

    Args:
        package: an `export.interpreter.ProgramInterpreter` of the compressed package.
        uncompressed: one of the same model, converted without compression.
        compression: the compression mode (`export.compression.COMPRESSIONS`).

    Returns:
        A JSON-ready dict: the number of `weights` checked, the `failures` (a line per weight
        that breaks its rule) and whether the check `passed`.
    """
    constants = {op.outputs[0].name: np.asarray(op.outputs[0].val, dtype=np.float64)
                 for op in uncompressed.operations
                 if op.op_type == "const" and isinstance(op.outputs[0].val, np.ndarray)
                 and op.outputs[0].val.dtype.kind == "f"}
    sparse = compression.startswith("sparse")
    values_rule = compression.removeprefix("sparse").lstrip("+")
    failures, checked = [], 0
    for op, decompressed in decompressed_weights(package):
        name = _original_name(op.outputs[0].name, constants)
        if name is None:
            failures.append(f"{op.name}: no weight of the uncompressed program matches it")
            continue
        reference = constants[name]
        checked += 1
        problem = _check(decompressed, reference, sparse, values_rule,
                         _channel_scale(op, reference.shape))
        if problem:
            failures.append(f"{name}: {problem}")
    if checked == 0:
        failures.append("the package has no compressed weights")
    return {"weights": checked, "failures": failures, "passed": not failures}


def decompressed_weights(interpreter):
    """`(op, value)` for each `constexpr_*` whose result the program computes with (not one
    that only feeds another `constexpr_*`, as the parts of a joint compression do)."""
    constexpr = [op for op in interpreter.operations if op.op_type.startswith("constexpr_")]
    feeding = {var.name for op in constexpr for var in op.inputs.values()
               if not isinstance(var, (list, tuple))}
    for op in constexpr:
        if not any(var.name in feeding for var in op.outputs):
            yield op, np.asarray(op.materialized_val_inference(), dtype=np.float64)


def _original_name(name, constants):
    """The uncompressed constant that `name` was made from: compression appends suffixes
    (`_quantized`, `_palettized`, `_sparsified`) to the name."""
    matches = [constant for constant in constants if name.startswith(constant)]
    return max(matches, key=len) if matches else None


def _channel_scale(op, shape):
    """The quantization step of every element, from an int8 operation's own scales (`None`
    where the operation has none)."""
    if op.op_type != "constexpr_affine_dequantize":
        return None
    scale = np.asarray(op.inputs["scale"].val, dtype=np.float64)
    if scale.ndim == 0:
        return np.full(shape, float(scale))
    axis = int(op.inputs["axis"].val)
    return np.broadcast_to(np.expand_dims(scale, [a for a in range(len(shape)) if a != axis]),
                           shape)


def _check(decompressed, reference, sparse, rule, scale):
    if decompressed.shape != reference.shape:
        return f"shape {decompressed.shape}, expected {reference.shape}"
    if not np.all(np.isfinite(decompressed)):
        return "non-finite values"
    kept = np.ones(reference.shape, dtype=bool)
    if sparse:
        # The model's zeros must stay zeros. A kept weight may still come out as zero, when a
        # palette entry or a quantization step rounds it there: the value rule judges that.
        wrong = int(np.sum((reference == 0) & (decompressed != 0)))
        if wrong:
            return f"{wrong} weights non-zero where the model's are zero"
        kept = reference != 0
    d, r = decompressed[kept], reference[kept]
    slack = FP16_SLACK * np.abs(r) + 1e-7
    if rule == "int8":
        if scale is None:  # a joint or blockwise op: the loosest step, from the weights
            scale = np.full(reference.shape, np.max(np.abs(reference)) / 127.0)
        excess = np.abs(d - r) - (0.5 * scale[kept] * (1 + FP16_SLACK) + slack)
        bad = int(np.sum(excess > 0))
        return f"{bad} weights more than half a quantization step off" if bad else None
    if rule.startswith("palettize"):
        nearest = _distance_to_nearest(r, np.unique(d))
        bad = int(np.sum(np.abs(d - r) > nearest + slack))
        return f"{bad} weights not on their nearest palette entry" if bad else None
    bad = int(np.sum(np.abs(d - r) > slack))
    return f"{bad} weights differ from the model's" if bad else None


def _distance_to_nearest(values, levels):
    """For each of `values`, the distance to the nearest of the sorted `levels`."""
    above = np.clip(np.searchsorted(levels, values), 0, len(levels) - 1)
    below = np.clip(above - 1, 0, len(levels) - 1)
    return np.minimum(np.abs(values - levels[above]), np.abs(values - levels[below]))
