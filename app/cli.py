"""The command line: `python -m app {fit,tune,lr-find,distill,doctor,evaluate,export,...}`.

Each command lives in its own module under `app/commands/`; its handler returns the exit code
(1 when `doctor` finds a problem or an exported package fails its checks). User errors are
printed as one line on stderr with exit code 2 and no traceback; Ctrl-C exits 130 and SIGTERM,
which stops training as gracefully, 143; a full disk is one line and exit code 1.
"""

import argparse
import errno
import os
import sys

from app import __version__
from app.commands import COMMANDS
from app.commands.arguments import BACKEND_HELP
from app.errors import Terminated, UserError

# The machine's storage is full or over quota: not a bug, and not the user's input either.
STORAGE_ERRORS = (errno.ENOSPC, errno.EDQUOT)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like every other user error."""

    def error(self, message):
        # prog is "app" or "app fit": the hint names the parser that raised the error.
        raise UserError(f"{message} (see: python -m {self.prog} --help)")


def build_parser():
    parser = _Parser(prog="app", description="Efficient learning with Keras 3.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--backend", default=None, help=BACKEND_HELP)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv=None):
    """Runs the command line; returns the exit code."""
    try:
        arguments = build_parser().parse_args(argv)
        return arguments.handler(arguments)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        # `fit` and `tune` say where the run is kept and how to resume it; other commands
        # leave nothing.
        what = interrupt.args[0] if interrupt.args else "no run directory was written"
        terminated = isinstance(interrupt, Terminated)
        print(f"{'terminated (SIGTERM)' if terminated else 'interrupted'}; {what}",
              file=sys.stderr)
        return 143 if terminated else 130
    except OSError as error:
        if error.errno not in STORAGE_ERRORS:
            raise
        # Staging folders are removed on the way out, so nothing half-written stays.
        where = f" writing {error.filename}" if error.filename else ""
        print(f"error: {os.strerror(error.errno).lower()}{where}; free some space (or set "
              "output.dir to another disk) and run again", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
