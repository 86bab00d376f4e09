"""The coremltools internals that the export checks read, behind one small adapter.

coremltools has no public API to read a saved ML program back, evaluate its operations or
inspect their types; the verifier and the Neural Engine report need all three. Everything
they use that is not public lives here, so a coremltools upgrade is checked in one file
(the measured behaviour is coremltools 9.0's).

```python
program, spec = load_saved_program("student.mlpackage")
holds_numbers(var), numpy_dtype(var)
```
"""


def load_saved_program(path):
    """The MIL program of a saved `.mlpackage`, with its weights from the weight blob, and the
    package's `Model` protobuf.

    Raises:
        ValueError: if the package holds another kind of model than an ML program.
    """
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load

    mlmodel = ct.models.MLModel(str(path), skip_model_load=True)
    spec = mlmodel.get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise ValueError(f"{path} holds a {spec.WhichOneof('Type')}, not an ML program")
    return load(spec, spec.specificationVersion, mlmodel.weights_dir), spec


def has_value_inference(op):
    """Whether coremltools can evaluate `op` itself (its class overrides `value_inference`)."""
    from coremltools.converters.mil.mil.operation import Operation

    return type(op).value_inference is not Operation.value_inference


def give_value(var, value):
    """Gives a non-constant variable a value, which `value_inference` then reads as `.val`."""
    holder = var.sym_type()
    holder.val = value
    var._sym_val = holder


def holds_numbers(var):
    """Whether `var` is a tensor or a scalar (not a string or a dictionary)."""
    from coremltools.converters.mil.mil import types

    return types.is_tensor(var.sym_type) or types.is_scalar(var.sym_type)


def is_tensor(var):
    from coremltools.converters.mil.mil import types

    return types.is_tensor(var.sym_type)


def numpy_dtype(var):
    """The NumPy dtype of a tensor or scalar variable."""
    from coremltools.converters.mil.mil import types

    return types.nptype_from_builtin(var.dtype)


def dtype_name(var):
    """The MIL name of a tensor or scalar variable's dtype, e.g. `"fp16"`."""
    from coremltools.converters.mil.mil import types

    return types.builtin_to_string(var.dtype)


def aggregated_pad(pad_type, kernel, input_size, strides, dilations):
    """The total padding per spatial axis of a `same`/`same_lower` window, as MIL computes it."""
    from coremltools.converters.mil.mil.ops.defs._utils import aggregated_pad as pad

    return pad(pad_type, kernel, input_size, strides, dilations)


def in_memory_program(mlmodel):
    """The MIL program that a converted (or compressed) `MLModel` holds before it is saved."""
    if mlmodel._mil_program is None:
        raise ValueError("the MLModel holds no MIL program (it was not converted in this process)")
    return mlmodel._mil_program
