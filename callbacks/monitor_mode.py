"""Whether a monitored metric improves by going down or up: the one rule every callback uses.

`EarlyStopping`, `BestModelCheckpoint`, `ReduceLROnPlateau` and `NaNGuard` take
`mode="auto"` by default and resolve it here, so that on the same metric and model they
always agree.

```python
resolve_mode("val_loss", "auto")        # "min"
resolve_mode("val_accuracy", "auto")    # "max"
improves(0.3, best=0.4, mode="min")     # True
```
"""

MODES = ("auto", "min", "max")


def check_mode(mode):
    """Raises `ValueError` unless `mode` is `"auto"`, `"min"` or `"max"`."""
    if mode not in MODES:
        raise ValueError(f"mode must be 'auto', 'min' or 'max'; got {mode!r}")


def resolve_mode(monitor, mode="auto", model=None):
    """`"min"` or `"max"` for `monitor`.

    `"auto"` decides, in order: names ending in `loss` are minimised; a metric of `model`
    that declares a direction follows it (as in Keras's own callbacks: precision, recall and
    F1 go up, hinge and MSE down); names containing `acc` or ending in `auc` are maximised;
    anything else is minimised. Like Keras, it refuses a name that `model` does not compute.

    Args:
        monitor: the logged name, e.g. `"val_loss"` or `"val_accuracy"`.
        mode: `"min"`, `"max"` or `"auto"`.
        model: the trained model, once its metrics are built (after its first step), or
            `None` to decide from the name alone.

    Raises:
        ValueError: for a mode other than `auto`, `min` and `max`, or in `auto` mode for a
            name that is not among `model`'s metrics.
    """
    check_mode(mode)
    if mode != "auto":
        return mode
    name = monitor.removeprefix("val_")
    if name.endswith("loss"):
        return "min"
    metrics = {metric.name: metric for metric in _compiled_metrics(model)}
    declared = getattr(metrics.get(name), "_direction", None)
    if declared in ("up", "down"):
        return "max" if declared == "up" else "min"
    if "acc" in monitor or monitor.endswith("auc"):  # accuracies and AUCs, as in Keras
        return "max"
    if metrics and name not in metrics:
        raise ValueError(f"cannot tell whether {monitor!r} should go up or down: the model "
                         f"computes no metric of that name ({', '.join(metrics)}); pass "
                         "mode='min' or mode='max'")
    return "min"


def improves(value, best, mode):
    """Whether `value` beats `best` in the direction of `mode` (`"min"` or `"max"`).

    `best=None` (nothing seen yet) is beaten by any value.
    """
    if best is None:
        return True
    return value < best if mode == "min" else value > best


def _compiled_metrics(model):
    """The metrics `model.compile` was given, unpacked from Keras's containers."""
    for metric in getattr(model, "metrics", None) or []:
        yield from getattr(metric, "metrics", None) or [metric]
