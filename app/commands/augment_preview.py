"""`python -m app augment-preview`: a PNG grid of augmented training images.

Each row is one training image: first as loaded, then as `--draws` different training
batches would see it under the configured `augmentation` section. Titles give the class, or
with MixUp/CutMix the two classes that weigh most in the soft target.

```console
python -m app augment-preview --set augmentation.flip=horizontal --set augmentation.rotation=0.05
```
"""

import os
from pathlib import Path

from app.commands.arguments import BACKEND, CONFIGURED, int_at_least, prepare
from app.errors import UserError


def add_parser(commands):
    parser = commands.add_parser(
        "augment-preview", parents=[BACKEND, CONFIGURED],
        help="write a PNG grid of augmented training images",
        description="Augment the first training images as training would (the configured "
                    "augmentation section) and write them, next to the originals, as a PNG.",
    )
    parser.add_argument("--output", default="augment-preview.png", metavar="PNG",
                        help="the image to write (default: %(default)s)")
    parser.add_argument("--images", type=int_at_least(1), default=8,
                        help="training images, one per row (default: %(default)s)")
    parser.add_argument("--draws", type=int_at_least(1), default=5,
                        help="augmented versions of each (default: %(default)s)")
    parser.set_defaults(handler=handle)


def handle(arguments):
    output = Path(arguments.output)
    if output.suffix.lower() != ".png":
        raise UserError(f"--output must name a .png file; got {output}")
    config = prepare(arguments)
    if not config.augmentation.enabled:
        raise UserError("the augmentation section changes nothing; set some of its keys, "
                        "e.g. --set augmentation.flip=horizontal")
    run_augment_preview(config, output, arguments.images, arguments.draws)
    print(f"wrote {output}")
    return 0


def run_augment_preview(config, output, images=8, draws=5):
    """Writes the grid of `images` training images and `draws` augmentations of each.

    Args:
        config: the configuration (its `data` and `augmentation` sections and `seed`).
        output: the `.png` path, written whole or not at all.
        images: how many training images (rows).
        draws: augmented versions per image (columns after the original).
    """
    import numpy as np

    from app.augmentation import build_augmenter
    from app.data import load_dataset

    dataset = load_dataset(config.data, seed=config.seed)
    augmenter = build_augmenter(config.augmentation, dataset, config.seed)
    count = min(images, len(dataset.y_train))
    originals = np.asarray(dataset.x_train[:count])
    labels = dataset.y_train[:count]
    columns = [(originals, labels)]
    for draw in range(draws):
        columns.append(augmenter(originals, labels, seed=(config.seed, draw, 0)))
    partial = output.with_name(f".{output.name}.partial")
    try:
        _plot_grid(columns, dataset.class_names, dataset.value_range, partial)
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)


def _plot_grid(columns, class_names, value_range, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = len(columns[0][0])
    figure, axes = plt.subplots(rows, len(columns), figsize=(1.6 * len(columns), 1.7 * rows),
                                squeeze=False)
    low, high = value_range
    for column, (images, targets) in enumerate(columns):
        for row in range(rows):
            axis = axes[row][column]
            pixels = np.clip((images[row] - low) / max(high - low, 1e-12), 0.0, 1.0)
            axis.imshow(pixels[..., 0] if pixels.shape[-1] == 1 else pixels,
                        cmap="gray" if pixels.shape[-1] == 1 else None, vmin=0, vmax=1)
            axis.set_title(_target_text(targets[row], class_names), fontsize=7)
            axis.axis("off")
    axes[0][0].set_title(f"original\n{axes[0][0].get_title()}", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100, format="png")
    plt.close(figure)


def _target_text(target, class_names):
    import numpy as np

    if np.ndim(target) == 0:
        return class_names[int(target)]
    top = np.argsort(target)[::-1][:2]
    return " + ".join(f"{class_names[index]} {target[index]:.2f}" for index in top
                      if target[index] > 0.005)
