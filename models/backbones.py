"""Classifiers on a pretrained body: a Keras application (MobileNet, EfficientNet, ResNet) or
the body of any Keras model, with the body's own preprocessing inside and a new head.

The model takes raw images (0–255 pixels, 1 or 3 channels, the data's size): it resizes
them to the body's `input_size`, makes 3 channels of a grey image, applies the preprocessing
the body was trained with, runs the body (named `backbone`), then global average pooling,
dropout and a `Dense` of logits. A pretrained body always runs in inference mode, so that
its BatchNormalization statistics stay those it learnt, as Keras's transfer-learning guide
does; a body without weights trains like any network.

```python
model = build_application_classifier((64, 64, 3), 10, application="mobilenet_v3_small",
                                     weights=None, input_size=(96, 96))
model.get_layer("backbone").trainable = False   # the first phase of fine-tuning
```
"""

import dataclasses
import re

import keras
import numpy as np

from models.blocks import regularizer

# Keras applications refuse smaller inputs.
MIN_INPUT_SIZE = 32
# ImageNet's per-channel mean in BGR order, which caffe-style models (ResNet50) subtract.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


class WeightsUnavailable(OSError):
    """The pretrained weights could not be downloaded or read."""


@dataclasses.dataclass(frozen=True)
class Application:
    """A Keras application usable as a backbone.

    Attributes:
        constructor: the `keras.applications` function's name.
        preprocessing: `"own"` (inside the application: takes 0–255), `"minus_one_to_one"`
            (x / 127.5 − 1) or `"caffe"` (BGR, ImageNet mean subtracted).
        block_pattern: a regular expression whose first group names a layer's block, the
            unit that fine-tuning unfreezes from the top.
        options: more constructor arguments.
    """

    constructor: str
    preprocessing: str
    block_pattern: str
    options: tuple = ()


APPLICATIONS = {
    "mobilenet_v2": Application("MobileNetV2", "minus_one_to_one", r"^(expanded_conv|block_\d+)_"),
    "mobilenet_v3_small": Application("MobileNetV3Small", "own", r"^(expanded_conv(?:_\d+)?)_",
                                      (("include_preprocessing", True),)),
    "mobilenet_v3_large": Application("MobileNetV3Large", "own", r"^(expanded_conv(?:_\d+)?)_",
                                      (("include_preprocessing", True),)),
    "efficientnet_b0": Application("EfficientNetB0", "own", r"^(block\d+[a-z])_"),
    "resnet50": Application("ResNet50", "caffe", r"^(conv\d_block\d+)_"),
}


def build_application_classifier(input_shape, num_classes, *, application, weights="imagenet",
                                 input_size=None, dropout=0.0, l1=0.0, l2=0.0, name=None):
    """A classifier on a Keras application's body.

    Args:
        input_shape: `(height, width, channels)` of the raw images.
        num_classes: number of output logits.
        application: a key of `APPLICATIONS`.
        weights: `"imagenet"` (downloaded by Keras once, then cached in `~/.keras/models`),
            `None` (random) or the path of a weights file of the body without its top.
        input_size: `(height, width)` the body sees, at least 32×32; `None`: the images' size
            (at least 32×32).
        dropout: dropout rate before the logits.
        l1: L1 penalty on the logits' kernel.
        l2: L2 penalty on the logits' kernel.
        name: the model's name.

    Raises:
        WeightsUnavailable: if `imagenet` weights cannot be downloaded or a file not read.

    Example:

    ```python
    model = build_application_classifier((224, 224, 3), 5, application="mobilenet_v2")
    ```
    """
    spec = APPLICATIONS[application]
    size = tuple(input_size or (max(MIN_INPUT_SIZE, side) for side in input_shape[:2]))
    constructor = getattr(keras.applications, spec.constructor)
    try:
        body = constructor(include_top=False, weights=weights, input_shape=(*size, 3),
                           name="backbone", **dict(spec.options))
    except Exception as error:  # Keras's download and file errors have no common type
        if weights is None:
            raise
        raise WeightsUnavailable(f"{spec.constructor} weights {weights!r}: "
                                 f"{str(error).splitlines()[0]}") from None
    inputs = keras.Input(shape=input_shape, name="input")
    x = _to_body_input(inputs, size)
    if spec.preprocessing == "minus_one_to_one":
        x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")(x)
    elif spec.preprocessing == "caffe":
        x = _caffe_preprocessing(x)
    return _with_head(inputs, x, body, num_classes, dropout, l1, l2, name or application,
                      pretrained=weights is not None)


def build_transfer_classifier(input_shape, num_classes, *, source, dropout=0.0, l1=0.0, l2=0.0,
                              name="transfer"):
    """A classifier on the body of a trained Keras model: all its layers but the last.

    Args:
        input_shape: `(height, width, channels)` of the raw images (or any sample shape when
            it equals the source model's).
        num_classes: number of output logits.
        source: a `keras.Model` whose last layer is its classifier (the project's `logits`, an
            application's `predictions`).
        dropout: dropout rate before the logits.
        l1: L1 penalty on the logits' kernel.
        l2: L2 penalty on the logits' kernel.
        name: the model's name.

    Raises:
        ValueError: if the source takes another number of channels or axes.
    """
    body = keras.Model(source.inputs, source.layers[-2].output, name="backbone")
    expected = tuple(source.inputs[0].shape[1:])
    if expected != tuple(input_shape):
        if len(expected) != 3 or len(input_shape) != 3 or expected[2] != input_shape[2]:
            raise ValueError(f"the source model takes samples of shape {expected}, the data "
                             f"has {tuple(input_shape)}")
    inputs = keras.Input(shape=input_shape, name="input")
    x = inputs
    if expected != tuple(input_shape):
        x = keras.layers.Resizing(*expected[:2], name="resize")(x)
    return _with_head(inputs, x, body, num_classes, dropout, l1, l2, name, pretrained=True)


def backbone_blocks(model, application=None):
    """The layers of `model`'s backbone grouped into blocks, bottom to top.

    Layers before the first block join it; layers after a block's last match join that block
    (a body's final convolution joins its top block). A body without a block pattern (a
    transferred model) has one block per layer that holds weights.

    Returns:
        A list of lists of layers.
    """
    body = model.get_layer("backbone")
    pattern = APPLICATIONS[application].block_pattern if application else None
    blocks, current = [], None
    for layer in body.layers:
        if pattern is None:
            if layer.weights:
                blocks.append([layer])
            elif blocks:
                blocks[-1].append(layer)
            continue
        match = re.match(pattern, layer.name)
        if match and match.group(1) != current:
            current = match.group(1)
            blocks.append([])
        if not blocks:
            blocks.append([])
        blocks[-1].append(layer)
    return blocks


def _to_body_input(inputs, size):
    x = inputs
    if tuple(inputs.shape[1:3]) != tuple(size):
        x = keras.layers.Resizing(*size, name="resize")(x)
    if inputs.shape[-1] == 1:
        x = keras.layers.Concatenate(name="grey_to_rgb")([x, x, x])
    elif inputs.shape[-1] != 3:
        raise ValueError(f"a pretrained backbone takes 1 or 3 channels; got {inputs.shape[-1]}")
    return x


def _caffe_preprocessing(x):
    """RGB to BGR and the ImageNet mean subtracted, as a fixed 1×1 convolution (which
    `.keras` files and Core ML take without custom code)."""
    layer = keras.layers.Conv2D(3, 1, name="preprocess", trainable=False)
    x = layer(x)
    swap = np.zeros((1, 1, 3, 3), dtype=np.float32)
    for rgb, bgr in ((0, 2), (1, 1), (2, 0)):
        swap[0, 0, rgb, bgr] = 1.0
    layer.set_weights([swap, -np.array(CAFFE_MEAN_BGR, dtype=np.float32)])
    return x


def _with_head(inputs, x, body, num_classes, dropout, l1, l2, name, pretrained):
    x = body(x, training=False) if pretrained else body(x)
    if len(x.shape) == 4:
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    elif len(x.shape) != 2:
        x = keras.layers.Flatten(name="flatten")(x)
    if dropout > 0.0:
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    logits = keras.layers.Dense(num_classes, kernel_regularizer=regularizer(l1, l2),
                                name="logits")(x)
    return keras.Model(inputs, logits, name=name)


def set_backbone_trainable(model, blocks, application=None):
    """Freezes the body (`blocks=0`), or lets its top `blocks` blocks train (`None`: all).

    BatchNormalization layers stay frozen either way: the body runs in inference mode, and
    its statistics and scales stay those it was pretrained with. Recompile the model after
    calling this (Keras fixes the trainable weights at `compile`).

    Args:
        model: a model from `build_application_classifier` or `build_transfer_classifier`.
        blocks: how many blocks from the top train, `0` for none, `None` for all.
        application: the key of `APPLICATIONS` the body comes from, or `None` (a transferred
            body: one block per layer with weights).
    """
    body = model.get_layer("backbone")
    body.trainable = blocks != 0
    if blocks == 0:
        return
    grouped = backbone_blocks(model, application)
    for block in grouped[:len(grouped) - blocks] if blocks is not None else []:
        for layer in block:
            layer.trainable = False
    for layer in body._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
