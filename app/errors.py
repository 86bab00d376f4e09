"""The one exception type that the CLI turns into a one-line message and exit code 2."""


class UserError(Exception):
    """A problem with the user's input: configuration, data, paths or arguments.

    The message is shown to the user as one line, without a traceback, so it must name
    what is wrong and what to do about it.

    Example:

    ```python
    raise UserError("data.label_column 'target' is not a column of data.csv "
                    "(columns: a, b, label); set data.label_column to one of them")
    ```
    """
