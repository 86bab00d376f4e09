"""Feature distillation between layers of any shapes: similarity-preserving distillation."""

import keras
from keras import ops


def batch_similarity(features):
    """The batch's similarity matrix `G = F Fᵀ`, each row scaled to unit L2 norm.

    Args:
        features: `(batch, ...)` activations of one layer, flattened per sample.

    Returns:
        A `(batch, batch)` float32 tensor.
    """
    features = ops.cast(features, "float32")
    flat = ops.reshape(features, (ops.shape(features)[0], -1))
    gram = ops.matmul(flat, ops.transpose(flat))
    norms = ops.sqrt(ops.sum(ops.square(gram), axis=-1, keepdims=True))
    return gram / ops.maximum(norms, keras.config.epsilon())


@keras.saving.register_keras_serializable(package="efficient_learning")
class SimilarityDistillation(keras.distillation.DistillationLoss):
    """Similarity-preserving feature distillation (Tung & Mori, 2019).

    The student learns to make the same samples of a batch alike, at one of its layers, as
    the teacher does at one of its own: the loss is `mean((G_t − G_s)²)` over the
    `(batch, batch)` similarity matrices of the two layers (`batch_similarity`), the
    paper's `‖G_t − G_s‖²_F / b²`. The matrices do not depend on the layers' widths or
    spatial sizes, so a 32-channel teacher block can guide an 8-channel student block,
    where Keras's `FeatureDistillation` needs both layers to have the same shape (or a
    projection to train).

    Args:
        teacher_layer_name: the teacher's layer whose output is matched.
        student_layer_name: the student's layer whose output is matched.

    Example:

    ```python
    distiller = keras.distillation.Distiller(
        teacher=teacher, student=student,
        distillation_losses=[
            keras.distillation.LogitsDistillation(temperature=4.0,
                                                  loss=keras.losses.KLDivergence()),
            SimilarityDistillation("conv_1_activation", "conv_1_activation")],
        distillation_loss_weights=[1.0, 100.0], student_loss_weight=0.1)
    ```
    """

    def __init__(self, teacher_layer_name, student_layer_name):
        self.teacher_layer_name = teacher_layer_name
        self.student_layer_name = student_layer_name

    def validate_model_compatibility(self, teacher, student):
        for role, model, name in (("teacher", teacher, self.teacher_layer_name),
                                  ("student", student, self.student_layer_name)):
            if getattr(model, "inputs", None) is None:
                raise ValueError(f"SimilarityDistillation needs a functional {role} to read "
                                 f"layer {name!r} from; {model.name} is subclassed")
            model.get_layer(name=name)  # a ValueError that names the layer

    def validate_outputs(self, teacher_outputs, student_outputs):
        """Any two shapes with the same batch do: only the batch's similarities are compared."""

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        difference = batch_similarity(teacher_outputs) - batch_similarity(student_outputs)
        return ops.mean(ops.square(difference))

    def get_config(self):
        return {"teacher_layer_name": self.teacher_layer_name,
                "student_layer_name": self.student_layer_name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
