"""Reading and writing a model's training state from a callback, on every backend.

```python
sync_jax_state(model)                    # before assigning a variable mid-epoch
saved = snapshot(model.weights)          # copies that later updates cannot change
restore(model.weights, saved)
write_atomically(Path("best.keras"), model.save)   # never a half-written file
```
"""

import os
from pathlib import Path

import keras
import numpy as np
from keras import ops


def sync_jax_state(model):
    """Writes JAX's training state back into the variables (a no-op on other backends).

    Within an epoch JAX keeps the state outside the variables: call this before reading
    them, or before assigning one so that the next step reads the assignment.
    """
    if keras.backend.backend() == "jax":
        model.jax_state_sync()


def snapshot(variables, replacements=None):
    """Copies of the variables' values, each kept on its own device.

    Args:
        variables: the variables to copy.
        replacements: `{id(variable): other variable}` whose value to copy instead (e.g.
            the moving average of a weight).
    """
    replacements = replacements or {}
    return [_copy(replacements.get(id(variable), variable).value) for variable in variables]


def restore(variables, values):
    """Assigns `values` (from `snapshot`) back to `variables`."""
    for variable, value in zip(variables, values):
        variable.assign(value)


def to_numpy(values):
    """`values` (from `snapshot`) as NumPy arrays, e.g. for a callback's `state_dict`;
    `None` stays `None`."""
    if values is None:
        return None
    return [np.asarray(ops.convert_to_numpy(value)) for value in values]


def write_atomically(path, write):
    """Calls `write(temporary_path)`, flushes the file to disk and renames it to `path`, so
    that a crash or a power cut leaves the old file or the new one, never a part of one.

    Args:
        path: the file to write.
        write: a function that writes a file at the path it is given (which has `path`'s
            suffix, as `model.save` wants).
    """
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.writing{path.suffix}")
    try:
        write(temporary)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself
    finally:
        os.close(directory)


def _copy(value):
    """A copy of a variable's value that later updates cannot change, kept on its device.

    TensorFlow's copy is copy-on-write, so it costs nothing until the variable changes. On a
    CPU, JAX's own copy is about 2x slower than NumPy's (`bench/early_stopping.py`).
    """
    if keras.backend.backend() == "jax" and all(
            device.platform == "cpu" for device in value.devices()):
        return np.array(value)
    return ops.copy(value)
