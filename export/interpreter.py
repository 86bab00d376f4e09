"""Runs a Core ML ML program with NumPy, so that an export can be checked on Linux.

No Core ML runtime exists outside Apple's systems, so `MLModel.predict` cannot run where
most training happens. The saved program itself can be read anywhere: coremltools' milproto
loader rebuilds the MIL program with its weights, and this interpreter walks its operations in
order. It evaluates each with the operation's own `value_inference` where coremltools has
one, with the NumPy kernels of `export.mil_kernels` where it has not, and the compression
ops (`constexpr_*`) with their `materialized_val_inference`. Every result is cast to the
dtype the program declares for it, so an fp16 program is rounded like fp16 storage.

```python
interpreter = ProgramInterpreter.from_package("student.mlpackage")
values = interpreter.run(input=x)           # every variable of the program, by name
values[interpreter.output_names[0]]
```
"""

import numpy as np

from export.coreml_private import (give_value, has_value_inference, holds_numbers,
                                   in_memory_program, load_saved_program, numpy_dtype)
from export.errors import UnsupportedOperation
from export.mil_kernels import KERNELS


class ProgramInterpreter:
    """Evaluates one function of a MIL program with NumPy.

    The interpreter owns the program: `value_inference` reads its inputs from the program's
    variables, so each run writes the values it computes into them.

    Args:
        program: a `coremltools.converters.mil.Program` (from `from_package`, or built
            with `coremltools.converters.mil.Builder`).
        function_name: the function to run.
        spec: the package's `Model` protobuf, when the program was loaded from one (its
            input descriptions say which shapes are flexible).
    """

    def __init__(self, program, function_name="main", spec=None):
        self.program = program
        self.function = program.functions[function_name]
        self.spec = spec
        # Constants that mention a flexible dimension, kept before any run writes values
        # into the program's variables (which is how `value_inference` reads its inputs).
        self._symbolic_constants = {
            op.outputs[0].name: op.outputs[0].sym_val for op in self.function.operations
            if op.op_type == "const" and op.outputs[0].val is None}

    @classmethod
    def from_package(cls, path):
        """Loads the ML program of a saved `.mlpackage` (its weights from the weight blob)."""
        program, spec = load_saved_program(path)
        return cls(program, spec=spec)

    @classmethod
    def from_mlmodel(cls, mlmodel):
        """The program of a converted `MLModel` in memory, as it was before saving."""
        return cls(in_memory_program(mlmodel), spec=mlmodel.get_spec())

    @property
    def input_names(self):
        return list(self.function.inputs)

    @property
    def output_names(self):
        return [var.name for var in self.function.outputs]

    @property
    def operations(self):
        return list(self.function.operations)

    def run(self, **inputs):
        """Evaluates the function on `inputs` (input name → array).

        Returns:
            A dict of every variable's value by name: inputs, constants, intermediate
            results and outputs.

        Raises:
            UnsupportedOperation: for an operation with no NumPy evaluation.
        """
        values = {}
        # Flexible dimensions (the batch of enumerated shapes) are symbols in the program;
        # the inputs bind them, and constant shapes that mention them are filled in.
        sizes = {}
        for name, var in self.function.inputs.items():
            if name not in inputs:
                raise ValueError(f"missing input {name!r}; the program takes "
                                 f"{', '.join(self.function.inputs)}")
            values[name] = _as_declared(var, np.asarray(inputs[name]))
            sizes.update(_bind_symbols(var.shape, values[name].shape))
        for op in self.function.operations:
            if op.blocks:
                raise UnsupportedOperation(f"{op.op_type} (control flow) in {op.name!r}")
            results = self._evaluate(op, values, sizes)
            if len(op.outputs) == 1:
                results = (results,)
            for var, result in zip(op.outputs, results):
                values[var.name] = _as_declared(var, result)
        return values

    def _evaluate(self, op, values, sizes):
        if op.op_type == "const":
            name = op.outputs[0].name
            if name in self._symbolic_constants:
                return _substitute(self._symbolic_constants[name], sizes)
            return op.outputs[0].val
        if op.op_type == "shape":
            return np.array(values[op.inputs["x"].name].shape, dtype=np.int32)
        if op.op_type.startswith("constexpr_"):
            return op.materialized_val_inference()
        kernel = KERNELS.get(op.op_type)
        if kernel is not None:
            return kernel(op, _input_values(op, values))
        if not has_value_inference(op):
            raise UnsupportedOperation(f"{op.op_type} in {op.name!r}")
        for var in input_vars(op):
            if var.op is None or var.op.op_type != "const" or var.name in self._symbolic_constants:
                give_value(var, values[var.name])
        return op.value_inference()


def _bind_symbols(declared_shape, actual_shape):
    if len(declared_shape) != len(actual_shape):
        raise ValueError(f"the input has shape {actual_shape}; the program takes "
                         f"{declared_shape}")
    return {size: actual for size, actual in zip(declared_shape, actual_shape)
            if not isinstance(size, (int, np.integer))}


def _substitute(symbolic, sizes):
    """A constant that holds symbols (e.g. a reshape to `[batch, -1]`), with their sizes."""
    array = np.asarray(symbolic, dtype=object)
    return np.array([sizes.get(item, item) for item in array.flat],
                    dtype=np.int32).reshape(array.shape)


def input_vars(op):
    """Every variable that `op` reads, variadic inputs (e.g. `concat`'s values) flattened."""
    for value in op.inputs.values():
        yield from (value if isinstance(value, (list, tuple)) else (value,))


def _input_values(op, values):
    return {name: (tuple(values[var.name] for var in value) if isinstance(value, (list, tuple))
                   else values[value.name])
            for name, value in op.inputs.items()}


def _as_declared(var, value):
    """`value` in the dtype the program declares for `var` (fp16 results rounded to fp16)."""
    if not holds_numbers(var):
        return value  # strings and dictionaries (the classifier's outputs)
    dtype = numpy_dtype(var)
    if isinstance(value, np.ndarray) and value.dtype == np.dtype(object):
        return value
    return np.asarray(value).astype(dtype)
