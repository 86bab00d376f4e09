"""Run directories that are complete or absent: written in a staging folder, then renamed."""

import datetime
import os
import shutil
import tempfile
from pathlib import Path

from app.errors import UserError


def plan_run_directory(output_config, default_name, now=None):
    """The path of a new run directory, checked to be free before any work starts.

    Args:
        output_config: an `app.config.OutputConfig`.
        default_name: the name to use when `output_config.name` is unset.
        now: the timestamp to use (`datetime`), for tests.

    Raises:
        UserError: when `output.timestamp` is off and the directory already exists.
    """
    parent = Path(output_config.dir)
    name = output_config.name or default_name
    if not output_config.timestamp:
        path = parent / name
        if path.exists():
            raise UserError(f"run directory {path} already exists; choose another output.name, "
                            "remove it, or set output.timestamp: true")
        return path
    stamp = (now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")
    path = parent / f"{name}-{stamp}"
    suffix = 1
    while path.exists():
        suffix += 1
        path = parent / f"{name}-{stamp}-{suffix}"
    return path


class StagedRunDirectory:
    """A context manager that builds a run directory next to its final place.

    Inside the `with` block files go to `staging`, a hidden folder beside `final_path`.
    On a clean exit `commit()` renames it into place in one step; on an error, including
    `KeyboardInterrupt`, the staging folder is deleted, so no half-written run is left.

    Example:

    ```python
    with StagedRunDirectory(Path("runs/mlp-20261122-101500")) as run:
        (run.staging / "config.yaml").write_text(text)
        run.commit()
    ```
    """

    def __init__(self, final_path):
        self.final_path = Path(final_path)
        self.staging = None
        self.committed = False

    def __enter__(self):
        parent = self.final_path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot create output directory {parent}: {error.strerror}") from None
        self.staging = Path(tempfile.mkdtemp(prefix=f".{self.final_path.name}.", dir=parent))
        # mkdtemp makes a private (0700) folder; a run directory gets the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        self.staging.chmod(0o777 & ~umask)
        return self

    def commit(self):
        """Moves the staged files to `final_path`, failing if something appeared there."""
        move_into_place(self.staging, self.final_path)
        self.committed = True
        return self.final_path

    def __exit__(self, exc_type, exc, traceback):
        if not self.committed and self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
        return False


def move_into_place(staging, final_path):
    """Renames a finished `staging` folder to `final_path` in one step.

    Raises:
        UserError: if `final_path` appeared in the meantime (nothing is moved then).
    """
    if Path(final_path).exists():
        raise UserError(f"run directory {final_path} appeared while training; "
                        f"nothing was written there")
    os.rename(staging, final_path)
    return Path(final_path)
