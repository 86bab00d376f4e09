"""A static Apple Neural Engine readiness report over an exported ML program.

Core ML decides per operation, when the model loads on a device, whether the Neural Engine
runs it; no public tool predicts that off-device. These rules flag what is known to keep a
program (or parts of it) off the Neural Engine, so that it can be fixed before a Mac is at
hand. Final placement is confirmed on a Mac with `MLComputePlan` (Xcode's performance report).

- errors: operations that compute in fp32 (the Neural Engine runs fp16 only), tensors
  over the Neural Engine's dimension limits;
- warnings: open-range input shapes, reshapes to a computed shape, operations that fall back
  (recurrent cells, gather/scatter, control flow, int32 compute), dilated convolutions,
  convolution kernels wider than 13, pooling kernels over 13 or strides over 2, upsampling
  by more than 2×;
- counts: operations, transposes and reshapes (each costs a memory copy on the Neural Engine).

```python
report = readiness_report(ProgramInterpreter.from_package("student.mlpackage"))
report["errors"], report["warnings"], report["counts"]
```
"""

import numpy as np

from export.coreml_private import dtype_name, holds_numbers, is_tensor
from export.interpreter import input_vars
from export.weight_check import decompressed_weights

# Operations that only move data or that Core ML handles outside the compute graph.
BOOKKEEPING_OPS = {"const", "cast", "classify"}
FALLBACK_OPS = {
    "recurrent cell": {"lstm", "gru", "rnn"},
    "gather/scatter": {"gather", "gather_nd", "gather_along_axis", "scatter", "scatter_nd",
                       "scatter_along_axis"},
    "control flow": {"while_loop", "cond"},
}
MAX_DIMENSION = 16384
MAX_RANK = 5
MAX_KERNEL = 13
MAX_POOL_STRIDE = 2
MAX_UPSAMPLING = 2
NOTE = ("Static rules only: Core ML places each operation when the model loads. Confirm the "
        "placement on a Mac with MLComputePlan (or Xcode's performance report).")


def readiness_report(interpreter):
    """Checks the program of `interpreter` against the Neural Engine's known limits.

    Args:
        interpreter: an `export.interpreter.ProgramInterpreter` (its `spec`, when it was
            loaded from a package, tells whether the input shape is an open range).

    Returns:
        A JSON-ready dict with `errors` and `warnings` (each a rule, a message and the
        operations concerned), `counts` and a `note` on what the report cannot know.
    """
    operations = interpreter.operations
    findings = {"errors": [], "warnings": []}

    def flag(level, rule, message, ops):
        if ops:
            findings[level].append({"rule": rule, "message": message.format(n=len(ops)),
                                    "operations": [op.name for op in ops]})

    compute = [op for op in operations if op.op_type not in BOOKKEEPING_OPS
               and not op.op_type.startswith("constexpr_")]
    fp32 = [op for op in compute if _output_dtype(op) == "fp32"]
    if any(_output_dtype(op) == "fp16" for op in compute):
        advice = ("this fp16 package keeps them in fp32 (coremltools does for operations it "
                  "deems unsafe in fp16); replace the layers they come from")
    else:
        advice = "export with --precision fp16"
    flag("errors", "fp32_compute",
         f"{{n}} operations compute in fp32, which the Neural Engine never runs; {advice}", fp32)
    # Computed tensors only: constants (weights, a palette's packed indices) are not limited.
    flag("errors", "dimension_limit",
         f"{{n}} operations have tensors of rank over {MAX_RANK} or a dimension over "
         f"{MAX_DIMENSION}", [op for op in compute if _over_limits(op)])
    flag("warnings", "open_range_shape",
         "the input shape is an open range, which runs off the Neural Engine; use --batch "
         "(enumerated shapes)", _open_range(interpreter, operations))
    flag("warnings", "dynamic_reshape",
         "{n} reshapes take a computed shape, which runs off the Neural Engine",
         [op for op in operations if op.op_type == "reshape" and _computed(op.inputs["shape"])])
    for kind, op_types in FALLBACK_OPS.items():
        flag("warnings", kind.replace(" ", "_").replace("/", "_"),
             f"{{n}} {kind} operations fall back from the Neural Engine",
             [op for op in operations if op.op_type in op_types])
    flag("warnings", "int32_compute",
         "{n} operations compute in int32, which falls back from the Neural Engine",
         [op for op in compute if _output_dtype(op) == "int32"])
    flag("warnings", "dilated_convolution",
         "{n} dilated convolutions may fall back from the Neural Engine",
         [op for op in operations if op.op_type.startswith("conv") and _dilated(op)])
    flag("warnings", "wide_convolution",
         f"{{n}} convolution kernels are wider than {MAX_KERNEL}",
         [op for op in operations if op.op_type.startswith("conv")
          and max(op.inputs["weight"].shape[2:], default=0) > MAX_KERNEL])
    flag("warnings", "large_pooling",
         f"{{n}} pooling operations have a kernel over {MAX_KERNEL} or a stride over "
         f"{MAX_POOL_STRIDE}", [op for op in operations if op.op_type.endswith("_pool")
                                and _large_pooling(op)])
    flag("warnings", "large_upsampling",
         f"{{n}} upsampling operations scale by more than {MAX_UPSAMPLING}×",
         [op for op in operations if op.op_type.startswith("upsample") and _upsampling(op)
          or _tiled_upsampling(op) > MAX_UPSAMPLING])
    return {
        **findings,
        # Sparse weights load as zeros that the Neural Engine skips (Apple: ResNet50 on an
        # iPhone 14 Pro, 1.52 ms dense, 1.28 ms at 75 % sparsity).
        "weights": [{"name": op.outputs[0].name, "compression": op.op_type,
                     "shape": list(value.shape), "sparsity": float(np.mean(value == 0))}
                    for op, value in decompressed_weights(interpreter)],
        "counts": {
            "operations": len([op for op in operations if op.op_type != "const"]),
            "transposes": sum(op.op_type == "transpose" for op in operations),
            "reshapes": sum(op.op_type == "reshape" for op in operations),
        },
        "note": NOTE,
    }


def format_report(report):
    """The report as printable lines: each finding with its level, then the counts."""
    lines = [f"{level[:-1]}: {finding['message']}"
             for level in ("errors", "warnings") for finding in report[level]]
    counts = report["counts"]
    weights = report.get("weights", [])
    if weights:
        sparsities = ", ".join(f"{weight['sparsity']:.0%}" for weight in weights)
        lines.append(f"{len(weights)} compressed weights, zeros: {sparsities}")
    lines.append(f"{counts['operations']} operations, {counts['transposes']} transposes, "
                 f"{counts['reshapes']} reshapes")
    return "\n".join(lines)


def _output_dtype(op):
    var = op.outputs[0]
    return dtype_name(var) if holds_numbers(var) else None


def _over_limits(op):
    for var in op.outputs:
        if not is_tensor(var):
            continue
        shape = var.shape
        if len(shape) > MAX_RANK or any(isinstance(size, (int, np.integer)) and
                                        size > MAX_DIMENSION for size in shape):
            return True
    return False


def _open_range(interpreter, operations):
    spec = getattr(interpreter, "spec", None)
    if spec is None:
        return []
    ranged = [feature.name for feature in spec.description.input
              if feature.type.WhichOneof("Type") == "multiArrayType"
              and feature.type.multiArrayType.WhichOneof("ShapeFlexibility") == "shapeRange"]
    # The finding names the operations that read an open-range input.
    return [op for op in operations
            if any(var.name in ranged for var in input_vars(op))]


def _computed(var):
    """Whether `var` is computed at run time (not a constant, even a symbolic one)."""
    return var.op is None or var.op.op_type != "const"


def _dilated(op):
    dilations = op.inputs.get("dilations")
    return dilations is not None and np.any(np.asarray(dilations.val) > 1)


def _large_pooling(op):
    kernel = np.asarray(op.inputs["kernel_sizes"].val)
    strides = op.inputs.get("strides")
    stride = np.asarray(strides.val) if strides is not None else np.ones(1)
    return bool(np.any(kernel > MAX_KERNEL) or np.any(stride > MAX_POOL_STRIDE))


def _tiled_upsampling(op):
    """The factor of a nearest-neighbour upsampling written as expand_dims → tile → reshape
    (how Keras's `UpSampling2D` and `ops.repeat` convert), else 0."""
    if op.op_type != "tile" or op.inputs["x"].op is None \
            or op.inputs["x"].op.op_type != "expand_dims" or op.inputs["reps"].val is None:
        return 0
    if not any(child.op_type == "reshape" for child in op.outputs[0].child_ops):
        return 0
    return int(np.max(op.inputs["reps"].val))


def _upsampling(op):
    factors = [op.inputs.get(name) for name in ("scale_factor_height", "scale_factor_width")]
    return any(factor is not None and float(factor.val) > MAX_UPSAMPLING for factor in factors)
