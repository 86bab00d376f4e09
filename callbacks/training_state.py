"""Reading and writing a model's training state from a callback, on every backend.

```python
sync_jax_state(model)                    # before assigning a variable mid-epoch
saved = snapshot(model.weights)          # copies that later updates cannot change
restore(model.weights, saved)
```
"""

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


def _copy(value):
    """A copy of a variable's value that later updates cannot change, kept on its device.

    TensorFlow's copy is copy-on-write, so it costs nothing until the variable changes. On a
    CPU, JAX's own copy is about 2x slower than NumPy's (`bench/early_stopping.py`).
    """
    if keras.backend.backend() == "jax" and all(
            device.platform == "cpu" for device in value.devices()):
        return np.array(value)
    return ops.copy(value)
