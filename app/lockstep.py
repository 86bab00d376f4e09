"""Several JAX processes train in lockstep: Keras waits for every call's result.

When every callback with a batch-end hook is `async_safe`, Keras 3 runs those hooks on its
own threads and keeps dispatching calls without waiting for their results. In one process
that lets the host run ahead of the devices. Two JAX processes on CPUs, whose devices meet in
Gloo collectives, then deadlocked in 2 of 11 `distill` runs under load: each main thread
blocked at an epoch's end, dispatching the metrics' `result()`, while the callback threads
waited for the losses of steps that never finished (`py-spy dump --native` of both
processes). So a run of several processes gives Keras a batch-end hook that is not
`async_safe`, and Keras reads every call's result before it dispatches the next, as it did
before the app's callbacks were all `async_safe`.

```python
callbacks = [*callbacks, *lockstep_callbacks()]   # [] in one process
```
"""

import keras

from app.feeding import process_part


class WaitForEachCall(keras.callbacks.Callback):
    """Makes Keras wait for each training and validation call's result before the next.

    Keras dispatches batch-end hooks on threads only if every callback that has one is
    `async_safe`; this one is not, and its hooks do nothing: Keras (3.15) converts the
    call's logs to Python numbers on the training thread before it calls them, which waits
    for the call.

    Example:

    ```python
    model.fit(x, y, callbacks=[WaitForEachCall()])   # one call in flight at a time
    ```
    """

    def on_train_batch_end(self, batch, logs=None):
        pass

    def on_test_batch_end(self, batch, logs=None):
        pass


def lockstep_callbacks():
    """`[WaitForEachCall()]` where several processes train a run together (JAX's distributed
    runtime), else `[]`."""
    return [WaitForEachCall()] if process_part()[1] > 1 else []
