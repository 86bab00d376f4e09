"""The exceptions the CLI turns into one line: `UserError` (exit code 2) and `Terminated`."""


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


class Terminated(KeyboardInterrupt):
    """Training stopped gracefully on SIGTERM (a scheduler, `docker stop`, a preemption).

    A `KeyboardInterrupt`, so that everything that cleans up after Ctrl-C cleans up after it;
    the CLI exits 143 (128 + SIGTERM), as a process killed by it would.
    """
