"""`python -m app make-dataset shapes DIR`: write the generated image task (`app.shapes`).

The images go into `DIR/<class>/`, a class-per-folder tree that `data.source: DIR` reads.
`DIR` is written through a staging folder, so an interrupted run leaves nothing behind.

```console
python -m app make-dataset shapes data/shapes --per-class 1000 --size 64 --seed 0
python -m app fit --set data.source=data/shapes --set data.color_mode=rgb --set model.architecture=cnn
```
"""

from pathlib import Path

from app.commands.arguments import BACKEND, int_at_least, start_backend
from app.errors import UserError

TASKS = ("shapes",)


def add_parser(commands):
    parser = commands.add_parser(
        "make-dataset", parents=[BACKEND], help="write a generated image task as an image folder",
        description="Render the 10-class shapes task (random colour, scale, rotation, position, "
                    "background clutter and noise) as DIR/<class>/<class>_NNNNN.png. The same "
                    "arguments write the same images on every machine.",
    )
    parser.add_argument("task", choices=TASKS, help="the generated task")
    parser.add_argument("directory", metavar="DIR", help="a new folder to write")
    parser.add_argument("--per-class", type=int_at_least(3), default=500,
                        help="images per class (default: %(default)s)")
    parser.add_argument("--size", type=int_at_least(8), default=64,
                        help="image side in pixels (default: %(default)s)")
    parser.add_argument("--seed", type=int_at_least(0), default=0,
                        help="seed of the task (default: %(default)s)")
    parser.set_defaults(handler=handle)


def handle(arguments):
    directory = Path(arguments.directory)
    if directory.exists():
        raise UserError(f"{directory} already exists; choose a new folder for the images")
    start_backend(arguments.backend)  # for Keras's progress bar
    total = run_make_dataset(directory, arguments.per_class, arguments.size, arguments.seed)
    print(f"wrote {total:,} images of {arguments.size}×{arguments.size} pixels in 10 classes "
          f"to {directory}")
    print(f"train on them:  python -m app fit --set data.source={directory} "
          f"--set data.color_mode=rgb --set model.architecture=cnn")
    return 0


def run_make_dataset(directory, per_class, size, seed):
    """Writes the shapes task into the new folder `directory`; returns the number of images."""
    import keras

    from app.rundir import Staging
    from app.shapes import CLASSES, write_shapes

    total = per_class * len(CLASSES)
    bar = keras.utils.Progbar(total, unit_name="image")
    every = max(1, total // 100)
    with Staging(directory) as staging:
        write_shapes(staging.folder, per_class, size, seed,
                     progress=lambda done: bar.update(done) if done % every == 0 or
                     done == total else None)
        staging.commit()
    return total
