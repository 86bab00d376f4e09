"""The loss of a batch and its gradients, on every backend (Keras 3 has no common API for it).

Each backend's path is a few lines: TensorFlow's `GradientTape`, `jax.value_and_grad` over
`model.stateless_call`, and `torch.autograd.grad`.

```python
loss, gradients = loss_and_gradients(model, x_batch, y_batch)
[None if g is None else float(np.linalg.norm(g)) for g in gradients]
```
"""

import keras
import numpy as np



def loss_and_gradients(model, x, y, loss=None, training=True):
    """The mean loss of `model` on `(x, y)` and its gradients, as NumPy.

    Args:
        model: a built Keras model.
        x: inputs of one batch.
        y: targets of the batch.
        loss: a loss callable `(y_true, y_pred)`, reduced by its mean; default: the
            compiled loss.
        training: whether layers run in training mode (dropout, batch statistics). Layer
            state (e.g. BatchNormalization's moving statistics) is not changed.

    Returns:
        `(loss, gradients)`: a float, and one array per `model.trainable_variables`, or
        `None` where the loss does not depend on the variable (TensorFlow and PyTorch tell;
        JAX gives zeros).
    """
    per_batch = loss or keras.losses.get(model.loss)

    def loss(y_true, y_pred):  # a loss function (per sample) or a reducing Loss object
        return keras.ops.mean(per_batch(y_true, y_pred))

    loss.__wrapped__ = per_batch

    x = keras.ops.convert_to_tensor(x)
    y = keras.ops.convert_to_tensor(y)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        value, gradients = _tensorflow(model, x, y, loss, training)
    elif backend == "jax":
        value, gradients = _jax(model, x, y, loss, training)
    elif backend == "torch":
        value, gradients = _torch(model, x, y, loss, training)
    else:
        raise NotImplementedError(f"no gradient path for the {backend!r} backend")
    return float(keras.ops.convert_to_numpy(value)), [
        None if gradient is None else np.asarray(keras.ops.convert_to_numpy(gradient))
        for gradient in gradients]


def _tensorflow(model, x, y, loss, training):
    import tensorflow as tf

    # Layer state is put back afterwards: a diagnostic must not train the model.
    state = [variable.numpy() for variable in model.non_trainable_variables]
    with tf.GradientTape() as tape:
        value = loss(y, model(x, training=training))
    gradients = tape.gradient(value, model.trainable_variables)
    for variable, saved in zip(model.non_trainable_variables, state):
        variable.assign(saved)
    return value, gradients


def _jax(model, x, y, loss, training):
    import jax

    def compute(trainable, non_trainable, x, y):
        y_pred, _ = model.stateless_call(trainable, non_trainable, x, training=training)
        return loss(y, y_pred)

    # Compiled once per model, loss and mode (and batch shape), since estimators call this
    # every epoch. The cache lives on the model (set past Keras's attribute tracking), so it
    # goes away with it.
    cache = model.__dict__.setdefault("_efficient_learning_gradient_functions", {})
    key = (loss.__wrapped__, training)
    if key not in cache:
        cache[key] = jax.jit(jax.value_and_grad(compute))
    trainable = [variable.value for variable in model.trainable_variables]
    non_trainable = [variable.value for variable in model.non_trainable_variables]
    return cache[key](trainable, non_trainable, x, y)


def _torch(model, x, y, loss, training):
    import torch

    state = [variable.value.detach().clone() for variable in model.non_trainable_variables]
    value = loss(y, model(x, training=training))
    parameters = [variable.value for variable in model.trainable_variables]
    gradients = torch.autograd.grad(value, parameters, allow_unused=True)
    with torch.no_grad():
        for variable, saved in zip(model.non_trainable_variables, state):
            variable.assign(saved)
    return value.detach(), gradients
