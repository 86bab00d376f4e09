"""Layers that coremltools cannot convert, found before converting and named in the error.

coremltools reports a failed conversion in terms of TensorFlow ops (`Erfc`, `TensorListReserve`,
…) deep inside a traceback; users need the Keras layer and the fix.

```python
check_convertible(model)   # raises UnconvertibleModel: layer 'dense_act' uses the exact gelu ...
```
"""

from export.errors import UnconvertibleModel

# TensorFlow ops in a coremltools error → what in a Keras model produces them and the fix.
KNOWN_OP_FAILURES = {
    "Erf": "the exact gelu (an erf); use keras.activations.gelu(x, approximate=True)",
    "Bitcast": "keras.ops.argmax inside the model; return logits and take the argmax in the app",
    "TensorList": "a recurrent layer that is not unrolled; build it with unroll=True",
    "While": "a loop (a recurrent layer that is not unrolled); build it with unroll=True",
}


def check_convertible(model):
    """Raises `UnconvertibleModel` naming the first layer of `model` that Core ML cannot convert.

    Args:
        model: a `keras.Model`.
    """
    for layer in _all_layers(model):
        problem = _problem(layer)
        if problem:
            raise UnconvertibleModel(f"layer {layer.name!r} {problem}, and retrain (or fine-tune) "
                                     "it")


def explain_conversion_error(model, error):
    """An `UnconvertibleModel` that says what a coremltools conversion error means for `model`,
    naming the layer that holds the failing operation when one can be found (an exact gelu
    inside a custom activation function, say)."""
    text = str(error)
    for op, meaning in KNOWN_OP_FAILURES.items():
        if op in text:
            layer = _layer_with_op(model, op)
            if layer is not None:
                return UnconvertibleModel(f"layer {layer.name!r} of {model.name!r} contains "
                                          f"{meaning}")
            return UnconvertibleModel(f"Core ML cannot convert {model.name!r}: it contains "
                                      f"{meaning}")
    first_line = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return UnconvertibleModel(f"Core ML cannot convert {model.name!r}: {first_line[:300]}")


def _problem(layer):
    import keras

    if isinstance(layer, keras.layers.RNN) and not layer.unroll:
        return ("is recurrent and Core ML converts recurrent layers only unrolled: build it "
                "with unroll=True (a fixed sequence length)")
    if getattr(layer, "activation", None) is keras.activations.gelu:
        return ("uses the exact gelu (an erf), which Core ML cannot convert: use "
                "keras.activations.gelu(x, approximate=True), or another model.activation")
    return None


def _layer_with_op(model, op):
    """The innermost layer whose TensorFlow graph holds an operation of type `op`, or `None`.

    Each layer is traced alone on its own input's shape; layers that cannot be (a layer of a
    Sequential model that was never called has no input) are skipped.
    """
    import tensorflow as tf

    for layer in _all_layers(model):
        if getattr(layer, "layers", None):  # a nested model: its own layers come later
            continue
        try:
            spec = tf.nest.map_structure(lambda tensor: tf.TensorSpec(tensor.shape, tensor.dtype),
                                         layer.input)
            graph = tf.function(layer.__call__).get_concrete_function(spec).graph
        except Exception:  # noqa: BLE001 (any layer that cannot be traced alone is skipped)
            continue
        if any(operation.type.startswith(op) for operation in graph.get_operations()):
            return layer
    return None


def _all_layers(model):
    """Every layer, nested models and wrappers (Bidirectional, TimeDistributed) included."""
    seen = []
    stack = list(getattr(model, "layers", []))
    while stack:
        layer = stack.pop(0)
        seen.append(layer)
        stack.extend(getattr(layer, "layers", []))
        for attribute in ("layer", "forward_layer", "backward_layer", "cell"):
            inner = getattr(layer, attribute, None)
            if inner is not None and hasattr(inner, "name") and inner not in seen:
                stack.append(inner)
    return seen
