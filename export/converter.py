"""Keras classifier → Core ML ML program, through a TensorFlow concrete function.

coremltools 9.0 converts a Keras 3 model only this way: the model is loaded under the
TensorFlow backend and traced as a `tf.function`. `ct.convert(keras_model)`, SavedModel
directories from `model.export()` and the PyTorch backend's traced graphs all fail, so
whatever backend trained the `.keras` file, the export runs under TensorFlow.

```python
model = keras.saving.load_model("runs/mlp-student/best.keras", compile=False)
mlmodel = convert(model, class_labels=["0", "1", ...], precision="fp16", batch_sizes=[1, 8])
mlmodel.save("mlp-student.mlpackage")
```
"""

import numpy as np

from export.errors import ExportError
from export.unsupported_layers import check_convertible, explain_conversion_error

INPUT_NAME = "input"
# With `image_scale` set, the package takes an image (a `CVPixelBuffer`, through Vision) here.
IMAGE_INPUT_NAME = "image"
# The program outputs softmax probabilities; the classifier turns them into a label and a
# label → probability dictionary, which is what Xcode and Vision expect of a classifier.
LABEL_OUTPUT = "classLabel"
PROBABILITIES_OUTPUT = "classLabel_probs"
PRECISIONS = ("fp16", "fp32")
# iOS 17 / macOS 14: ML programs with fp16 compute, EnumeratedShapes and the compression ops
# that `coremltools.optimize.coreml` writes for this target.
DEPLOYMENT_TARGET = "iOS17"


def outputs_probabilities(model):
    """Whether `model` already ends in a softmax (a `Softmax` layer, or a last layer with
    `activation="softmax"`): its outputs are probabilities, not logits."""
    import keras

    last = model.layers[-1]
    if isinstance(last, keras.layers.Softmax):
        return True
    return getattr(getattr(last, "activation", None), "__name__", None) == "softmax"


def convert(model, class_labels, precision="fp16", batch_sizes=(1,), image_scale=None,
            deployment_target=DEPLOYMENT_TARGET):
    """Converts a Keras classifier into a Core ML classifier.

    A model that outputs logits gets a softmax; one that already ends in a softmax
    (`outputs_probabilities`) does not get a second one.

    With `image_scale`, the package's input is an image (`ct.ImageType`, named `image`): RGB
    for a model of 3 channels, grayscale for 1. Core ML multiplies its 0–255 pixels by
    `image_scale` (on the Neural Engine) and the model's own preprocessing follows, so a
    model trained on 0–255 pixels takes 1 and one trained on 0–16 (digits) takes 16/255. In
    the program the image is `(1, channels, height, width)` float32.

    Args:
        model: a `keras.Model` loaded under the TensorFlow backend, with one input and one
            output of logits or probabilities.
        class_labels: the class names, in the order of the logits.
        precision: `"fp16"` (what the Neural Engine runs) or `"fp32"`.
        batch_sizes: the batch sizes the package accepts. One size gives a fixed shape; more
            give `EnumeratedShapes`, which keep the Neural Engine (open ranges do not).
        image_scale: `None` for a float32 tensor input named `input`; else the factor from
            0–255 pixels to the values the model was trained on (batch size 1 only).
        deployment_target: the oldest OS the package runs on, a `coremltools.target` name
            (`"iOS18"` for joint sparse compression).

    Returns:
        The `coremltools.models.MLModel`, not yet saved.

    Raises:
        UnconvertibleModel: if a layer cannot be converted (naming it and what to use instead).
        ExportError: if `image_scale` is given for a model or batch an image cannot feed.
    """
    import coremltools as ct
    import tensorflow as tf

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
    check_convertible(model)
    sample_shape = tuple(model.input_shape[1:])
    batch_sizes = sorted(set(batch_sizes))
    if len(batch_sizes) == 1:
        shape = (batch_sizes[0], *sample_shape)
        trace_shape = shape
    else:
        shape = ct.EnumeratedShapes(shapes=[(size, *sample_shape) for size in batch_sizes],
                                    default=(batch_sizes[0], *sample_shape))
        trace_shape = (None, *sample_shape)
    if image_scale is None:
        input_name = INPUT_NAME
        input_type = ct.TensorType(name=INPUT_NAME, shape=shape, dtype=np.float32)
    else:
        input_name = IMAGE_INPUT_NAME
        input_type = _image_input(sample_shape, batch_sizes, image_scale)

    ends_in_softmax = outputs_probabilities(model)

    @tf.function
    def probabilities(x):
        outputs = model(x, training=False)
        return outputs if ends_in_softmax else tf.nn.softmax(outputs, axis=-1)

    # The TensorSpec's name becomes the Core ML input's name.
    function = probabilities.get_concrete_function(
        tf.TensorSpec(trace_shape, tf.float32, name=input_name))
    compute_precision = (ct.precision.FLOAT16 if precision == "fp16"
                         else ct.precision.FLOAT32)
    try:
        return ct.convert(
            [function],
            source="tensorflow",
            convert_to="mlprogram",
            inputs=[input_type],
            classifier_config=ct.ClassifierConfig([str(label) for label in class_labels]),
            compute_precision=compute_precision,
            minimum_deployment_target=getattr(ct.target, deployment_target),
        )
    except Exception as error:  # coremltools raises bare exceptions of many kinds
        raise explain_conversion_error(model, error) from error


def _image_input(sample_shape, batch_sizes, scale):
    import coremltools as ct

    if len(sample_shape) != 3 or sample_shape[-1] not in (1, 3) or None in sample_shape:
        raise ExportError(f"an image input needs a model that takes fixed (height, width, 1 "
                          f"or 3 channels) inputs; this one takes {sample_shape}: export it "
                          f"with a tensor input")
    if batch_sizes != [1]:
        raise ExportError(f"an image input takes one image at a time; got batch sizes "
                          f"{','.join(map(str, batch_sizes))}: export it with batch 1")
    layout = ct.colorlayout.RGB if sample_shape[-1] == 3 else ct.colorlayout.GRAYSCALE
    return ct.ImageType(name=IMAGE_INPUT_NAME, shape=(1, *sample_shape), scale=float(scale),
                        color_layout=layout, channel_first=False)


def set_metadata(mlmodel, *, author, license, description, version, user_defined):
    """Fills the package's metadata, which Xcode shows on the model's page.

    Args:
        mlmodel: the converted `MLModel`.
        author: `author` field.
        license: `license` field.
        description: `shortDescription`.
        version: `versionString`.
        user_defined: more key → value pairs (stringified), e.g. the config hash.
    """
    mlmodel.author = author
    mlmodel.license = license
    mlmodel.short_description = description
    mlmodel.version = version
    for key, value in user_defined.items():
        mlmodel.user_defined_metadata[key] = str(value)
    if any(feature.name == IMAGE_INPUT_NAME for feature in mlmodel.get_spec().description.input):
        mlmodel.input_description[IMAGE_INPUT_NAME] = "the image to classify"
    else:
        mlmodel.input_description[INPUT_NAME] = "raw features, as the Keras model takes them"
    mlmodel.output_description[LABEL_OUTPUT] = "most likely class"
    mlmodel.output_description[PROBABILITIES_OUTPUT] = "probability of each class"
    return mlmodel
