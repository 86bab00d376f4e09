"""The app's command line with a Ctrl-C at the end of one batch of training.

Run by `test_distribution.py` in a fresh process, because its devices must exist before the
backend starts: `python tests/interrupted_fit.py EPOCH BATCH ARGUMENTS...` runs
`python -m app ARGUMENTS...` and sends SIGINT at the end of batch BATCH of epoch EPOCH
(both 0-based), as `tests.helpers.interrupt_at` does in the test's own process.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

if __name__ == "__main__":
    import pytest

    from app.cli import main
    from tests.helpers import interrupt_at

    interrupt_at(pytest.MonkeyPatch(), int(sys.argv[1]), int(sys.argv[2]))
    sys.exit(main(sys.argv[3:]))
