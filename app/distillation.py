"""Distillation: a student learns from a trained teacher (used by `python -m app distill`).

The student trains with Keras's `Distiller` on α·CE(y, s) + (1−α)·T²·KL(softmax(t/T) ‖
softmax(s/T)) (Hinton et al., 2015), on the teacher's data and splits (`with_teacher_data`),
so no test sample was ever seen by the teacher.

Keras 3.15's `LogitsDistillation` with its default `loss="kl_divergence"` applies the loss to
raw logits, skipping the softmax and the T² factor (a measured loss of 25.10 where T²·KL is
5.99); a `keras.losses.KLDivergence()` instance takes the correct path, which
`tests/test_distillation.py` checks against NumPy.

With `distillation.alpha: 0` the labels are not used at all: the student matches the
teacher's function on every (augmented, mixed) image, Beyer et al.'s function matching.
`distillation.feature_layers` adds `callbacks.SimilarityDistillation` between two layers.

```python
distiller = build_distiller(teacher, student, config.distillation)
distiller.fit(x, y, epochs=10)   # trains `student`
```
"""

import dataclasses

from app.config import DataConfig
from app.errors import UserError

# `distill` builds a student unless the configuration says otherwise.
STUDENT_DEFAULTS = {"model.size": "student"}


def build_distiller(teacher, student, distillation, metrics=None):
    """Wraps a compiled `student` in a compiled `keras.distillation.Distiller`.

    The teacher sees exactly the batch the student sees, augmented and mixed in the data
    pipeline (`app.augmentation`): the consistent teaching of Beyer et al. (2022).

    Args:
        teacher: the trained teacher (outputs logits); it is frozen.
        student: a compiled student (`build_compiled_model`) that outputs logits; the
            distiller trains it with its optimizer, loss and metrics.
        distillation: an `app.config.DistillationConfig` (temperature, α and the optional
            feature layers).
        metrics: the metrics to compile with, else Keras's sparse `accuracy`.

    Raises:
        UserError: if a feature layer is not in its model.

    Example:

    ```python
    distiller = build_distiller(teacher, student, DistillationConfig(temperature=4, alpha=0.1))
    distiller.fit(x, y, epochs=10)   # trains `student`
    ```
    """
    import keras

    # An instance, not the string "kl_divergence": only the instance gets the softmax and the
    # T² factor (see the module docstring).
    losses = [keras.distillation.LogitsDistillation(temperature=distillation.temperature,
                                                    loss=keras.losses.KLDivergence())]
    weights = [1.0]
    if distillation.feature_layers:
        from callbacks import SimilarityDistillation

        check_feature_layers(teacher, student, distillation)
        losses.append(SimilarityDistillation(*distillation.feature_layers))
        weights.append(distillation.feature_weight)
    distiller = keras.distillation.Distiller(
        teacher=teacher, student=student, distillation_losses=losses,
        distillation_loss_weights=weights, student_loss_weight=distillation.alpha)
    if metrics is None:
        metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    distiller.compile(optimizer=student.optimizer, loss=student.loss, metrics=metrics,
                      steps_per_execution=student.steps_per_execution,
                      jit_compile=student.jit_compile)
    return distiller


def check_feature_layers(teacher, student, distillation):
    """Raises a one-line `UserError` if `distillation.feature_layers` names a layer that the
    teacher or the student lacks (the message lists the layers it has)."""
    for role, model, name in zip(("teacher", "student"), (teacher, student),
                                 distillation.feature_layers or ()):
        names = [layer.name for layer in model.layers]
        if name not in names:
            raise UserError(f"distillation.feature_layers: the {role} has no layer {name!r}; "
                            f"its layers are {', '.join(names)}")


def with_teacher_data(config, teacher_config):
    """`config` on the teacher's data and splits (`data.split_seed` pins them)."""
    teacher_data = teacher_config.data
    split_seed = (teacher_data.split_seed if teacher_data.split_seed is not None
                  else teacher_config.seed)
    data = dataclasses.replace(teacher_data, split_seed=split_seed)
    # A distilled run's own config.yaml holds exactly `data`, so it can be run again.
    if config.data not in (DataConfig(), teacher_data, data):
        raise UserError("distill trains on the teacher's data and splits; drop the data "
                        "section from the student's configuration")
    return dataclasses.replace(config, data=data)
