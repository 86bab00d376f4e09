"""The debugging checklist of a new model (`python -m app doctor`), run on the configured one.

Each check prints one line with ✓ or ✗ and, when it fails, what to look at:

1. the initial loss is close to ln(classes), what an untrained classifier should score;
2. the outputs and the loss are finite;
3. every trainable variable gets a finite, non-zero gradient (missing or zero gradients
   point at disconnected or dead layers);
4. the model can overfit a single batch (if it cannot, the model or the optimizer is
   broken, and more data will not help).

```python
checks = run_doctor(load_config())   # [Check(ok=True, text="initial loss ..."), ...]
```
"""

import dataclasses
import math

import numpy as np

from app.backend import set_random_seed

OVERFIT_SAMPLES = 32
OVERFIT_STEPS = 200


@dataclasses.dataclass
class Check:
    ok: bool
    text: str

    def __str__(self):
        return f"{'✓' if self.ok else '✗'} {self.text}"


def run_doctor(config):
    """Runs the checks on the configured model and a training batch; returns the `Check`s."""
    from app.data import load_dataset
    from app.engine import build_compiled_model, check_model_fits_data, resolve_config
    from app.tables.optimizers import default_learning_rate
    from callbacks.gradients import loss_and_gradients

    dataset = load_dataset(config.data, seed=config.seed)
    check_model_fits_data(config.model, dataset)
    config = resolve_config(config, "doctor")
    if config.schedule.lr == "auto":  # the finder is not what is being checked here
        config = dataclasses.replace(config, schedule=dataclasses.replace(
            config.schedule, lr=default_learning_rate(config.optimizer.name)))
    set_random_seed(config.seed)
    model = build_compiled_model(config, dataset)
    size = min(config.training.batch_size, len(dataset.x_train))
    x, y = dataset.x_train[:size], dataset.y_train[:size]
    loss, gradients = loss_and_gradients(model, x, y)
    checks = [_initial_loss(loss, dataset.num_classes),
              _finite(loss, model, x),
              _gradients(model, gradients)]
    set_random_seed(config.seed)
    checks.append(_overfit(build_compiled_model(config, dataset), dataset))
    return checks


def _initial_loss(loss, classes):
    # `loss` is in training mode, with batch statistics as the first update sees them (at
    # initialisation BatchNormalization's moving statistics are still 0 and 1).
    expected = math.log(classes)
    ok = math.isfinite(loss) and abs(loss / expected - 1) <= 0.5
    hint = "" if ok else ": check the output layer (logits, no activation) and the initializer"
    return Check(ok, f"initial loss {loss:.3f} vs ln({classes}) = {expected:.3f}{hint}")


def _finite(loss, model, x):
    import keras

    outputs = keras.ops.convert_to_numpy(model(x, training=True))
    ok = math.isfinite(loss) and bool(np.isfinite(outputs).all())
    hint = "" if ok else ": look for a log of 0, a division by 0 or unnormalised inputs"
    return Check(ok, f"outputs and loss are finite{hint}")


def _gradients(model, gradients):
    missing, zero, broken = [], [], []
    for variable, gradient in zip(model.trainable_variables, gradients):
        if gradient is None:
            missing.append(variable.path)
        elif not np.isfinite(gradient).all():
            broken.append(variable.path)
        elif not np.any(gradient):
            zero.append(variable.path)
    problems = [f"{label}: {', '.join(names)}" for label, names in
                (("no gradient", missing), ("zero gradient", zero), ("non-finite gradient", broken))
                if names]
    if not problems:
        return Check(True, f"all {len(gradients)} trainable variables get a finite, "
                           "non-zero gradient")
    return Check(False, "; ".join(problems) + " (disconnected or dead layers)")


def _overfit(model, dataset):
    size = min(OVERFIT_SAMPLES, len(dataset.x_train))
    x, y = dataset.x_train[:size], dataset.y_train[:size]
    first = model.evaluate(x, y, verbose=0)[0]
    for _ in range(OVERFIT_STEPS):  # `fit` with an epoch per step took 20 s on TensorFlow
        model.train_on_batch(x, y)
    last, accuracy = model.evaluate(x, y, verbose=0)
    ok = accuracy == 1.0
    if ok:
        hint = ""
    elif not math.isfinite(last) or last > 2 * first:
        # The loss overflowed or more than doubled: the steps overshoot, and a larger rate
        # cannot help. (A slightly larger loss is no sign: with a rate too small to move the
        # weights, BatchNormalization's moving statistics still change it.)
        hint = ": the loss grew; lower schedule.lr (or set training.clip_norm)"
    else:
        hint = ": raise schedule.lr, lower model.dropout, or check the labels"
    return Check(ok, f"overfits one batch of {size}: loss {first:.3f} → {last:.4f}, accuracy "
                     f"{accuracy:.3f} after {OVERFIT_STEPS} steps{hint}")


def format_checks(checks):
    return "\n".join(str(check) for check in checks)
