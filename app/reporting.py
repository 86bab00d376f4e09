"""What a run writes for people: `history.csv`, `metrics.json`, `curves.png` and a summary."""

import csv
import json
import math


def write_history_csv(history, path):
    """Writes one row per epoch with every logged metric, including the learning rate."""
    keys = sorted(history)
    epochs = len(next(iter(history.values()), []))
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", *keys])
        for epoch in range(epochs):
            writer.writerow([epoch + 1, *(_csv_number(history[key][epoch]) for key in keys)])


def read_history_csv(path):
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {key: [float(row[key]) for row in rows] for key in rows[0]} if rows else {}


def write_json(data, path):
    with open(path, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=False, allow_nan=True)
        handle.write("\n")


def plot_curves(history, path, title, best_epoch=None):
    """Loss, accuracy and learning rate against epoch as a PNG, with the best epoch marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = range(1, len(history["loss"]) + 1)
    panels = [("loss", "loss"), ("accuracy", "accuracy"), ("learning_rate", "learning rate")]
    panels = [(key, label) for key, label in panels if key in history]
    figure, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6))
    for axis, (key, label) in zip(axes, panels):
        axis.plot(epochs, history[key], label="train" if key != "learning_rate" else None)
        if f"val_{key}" in history:
            axis.plot(epochs, history[f"val_{key}"], label="validation")
        if best_epoch is not None:
            axis.axvline(best_epoch, color="grey", linestyle="--", linewidth=1,
                         label="best epoch" if key == "loss" else None)
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        if key != "learning_rate":
            axis.legend()
        else:
            axis.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def format_summary(metrics, run_dir):
    """A short human-readable summary of `metrics.json`."""
    best, test = metrics["best"], metrics["test"]
    lines = [
        f"run directory     {run_dir}",
        f"backend           {metrics['backend']}  ({metrics['epochs_run']} epochs, "
        f"{metrics['wall_time_seconds']:.1f} s)",
        f"best epoch        {best['epoch']}  ({best['monitor']} = {best['value']:.4f})",
        f"validation        accuracy {best['val_accuracy']:.4f}  loss {best['val_loss']:.4f}",
        f"test              accuracy {test['accuracy']:.4f}  loss {test['loss']:.4f}",
        f"majority baseline accuracy {metrics['baseline']['majority_class_accuracy']:.4f}",
    ]
    distribution = metrics.get("distribution", {})
    if distribution.get("strategy", "none") != "none":
        replicas, strategy = distribution["replicas"], distribution["strategy"]
        if distribution.get("processes", 1) > 1:
            strategy += f", {distribution['processes']} processes"
        mesh = distribution.get("mesh")
        if mesh is not None:  # model-parallel: `replicas` counts the batch axis only
            replicas = mesh["batch"] * mesh["model"]
            strategy += f", mesh batch {mesh['batch']} × model {mesh['model']}"
        lines.insert(2, f"devices           {replicas} ({strategy})")
    if "lr_finder" in metrics:
        finder = metrics["lr_finder"]
        lines.insert(2, f"learning rate     {finder['suggestion']:.3g}  (LR finder, {finder['rule']} "
                        "rule: lr_find.png)")
    return "\n".join(lines)


def _csv_number(value):
    value = float(value)
    return repr(value) if math.isfinite(value) else str(value)
