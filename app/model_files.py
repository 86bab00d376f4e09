"""Loading a `.keras` file that a user points at, with one-line errors instead of tracebacks.

Keras reports an empty or truncated file as "File not found" (it exists) and a Lambda layer as
a long traceback; both are the user's file, not a bug, so they get one line that says what is
wrong and what to do. Loading always uses Keras's safe mode.

```python
model = load_model_file(Path("runs/cnn-teacher/best.keras"), compile=False)
```
"""

import zipfile
from pathlib import Path

from app.errors import UserError


def load_model_file(path, compile=True):
    """`keras.saving.load_model(path, compile=compile)` in safe mode.

    Args:
        path: the `.keras` file.
        compile: restore the training configuration (optimizer, loss) too.

    Raises:
        UserError: if the file is missing, is not a whole `.keras` archive, holds a Lambda
            layer (Python code, which safe mode refuses to run), or cannot be rebuilt.
    """
    import keras

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass a .keras file or a run directory")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path} is not a whole .keras file ({path.stat().st_size:,} bytes: "
                        "empty, cut short or another format); save or copy the model again")
    try:
        return keras.saving.load_model(path, compile=compile)
    except ValueError as error:
        message = str(error)
        if "Lambda" in message and "safe_mode" in message:
            raise UserError(f"{path} holds a Lambda layer, whose Python code could run "
                            "arbitrary code when loaded, so safe mode refuses it; rebuild the "
                            "model with a registered custom layer instead") from None
        first_line = message.strip().splitlines()[0] if message.strip() else type(error).__name__
        raise UserError(f"{path} cannot be loaded: {first_line}") from None
