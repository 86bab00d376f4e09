"""Checks the import contracts, then runs the test suite once per Keras backend, each in its
own process, and sums the results.

Usage: `python tests/run_all_backends.py [pytest arguments...]`, e.g. `-m "not slow"` for the
fast subset or `-k fit`; the arguments go to pytest unchanged. Set `BACKENDS=jax,torch` to run
a subset, `JOBS=1` to run the backends one after the other. Each backend's counts are read from
pytest's JUnit XML report. Exits non-zero if the contracts are broken or any backend's run
fails (including "no tests collected").

The backends run side by side, as many at once as there are CPU cores (`JOBS`), in the order
given: most of a test's time is Python, not arithmetic, so on two cores each backend takes
only 1.15 to 1.3 times as long as alone (the whole suite: 38 minutes instead of 63, before
JAX's compilation cache of `conftest.py` brought it to 25 to 30). Running all three at once on
two cores took longer (a clean-clone CI run: 41:46, against 37:25 with two at once), and one
backend at a time over two pytest-xdist workers slowed the fast loop (465 s against 405 s),
each worker paying Keras's import and the collection. Each backend's output is printed whole
when it finishes.
"""

import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COUNTED = ("passed", "failed", "skipped", "errors")


def check_import_contracts():
    """Runs import-linter on the contracts in pyproject.toml; returns its exit code."""
    command = [sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
               "lint_imports_command()", "--no-cache"]
    print("=== import contracts (lint-imports)", flush=True)
    process = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                             env=dict(os.environ, PYTHONPATH=str(REPO)))
    report = process.stdout + process.stderr
    print(report[report.find("Contracts"):] if "Contracts" in report else report, flush=True)
    return process.returncode


def run_backend(backend, pytest_arguments):
    """Runs pytest on `backend`, then prints its output; returns `(exit code, counts,
    seconds)`."""
    environment = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    with tempfile.TemporaryDirectory() as directory:
        report, log = Path(directory) / "junit.xml", Path(directory) / "pytest.log"
        # The slowest tests are listed, to keep the suite within its time.
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                   "--durations=10", f"--junitxml={report}", *pytest_arguments]
        say(f"=== KERAS_BACKEND={backend} started")
        started = time.perf_counter()
        with log.open("w") as stream:
            code = subprocess.run(command, cwd=REPO, env=environment, stdout=stream,
                                  stderr=subprocess.STDOUT).returncode
        seconds = time.perf_counter() - started
        output = log.read_text(errors="replace")
        say(f"\n=== KERAS_BACKEND={backend}: {' '.join(command[1:])}\n{output}")
        counts = read_counts(report) if report.exists() else dict.fromkeys(COUNTED, 0)
    return code, counts, seconds


def say(text):
    """Prints `text` in one write, so that backends ending together do not mix their lines."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def read_counts(report):
    """Passed, failed, skipped and errors summed over the report's test suites."""
    root = ElementTree.parse(report).getroot()
    suites = [root] if root.tag == "testsuite" else root.iter("testsuite")
    totals = dict.fromkeys(("tests", "failures", "skipped", "errors"), 0)
    for suite in suites:
        for key in totals:
            totals[key] += int(suite.get(key, 0))
    failed, errors, skipped = totals["failures"], totals["errors"], totals["skipped"]
    return {"passed": totals["tests"] - failed - errors - skipped, "failed": failed,
            "skipped": skipped, "errors": errors}


def main():
    backends = os.environ.get("BACKENDS", "tensorflow,jax,torch").split(",")
    contracts = check_import_contracts()
    started = time.perf_counter()
    jobs = int(os.environ.get("JOBS", os.cpu_count() or 1))
    with ThreadPoolExecutor(max(1, min(jobs, len(backends)))) as pool:
        runs = {backend: pool.submit(run_backend, backend, sys.argv[1:]) for backend in backends}
        results = {backend: run.result() for backend, run in runs.items()}
    print(f"\nimport contracts: {'kept' if contracts == 0 else 'BROKEN'}")
    print("backend      exit  passed  failed  skipped  errors  seconds")
    for backend, (code, counts, seconds) in results.items():
        print(f"{backend:<12} {code:>4}  {counts['passed']:>6}  {counts['failed']:>6}  "
              f"{counts['skipped']:>7}  {counts['errors']:>6}  {seconds:>7.0f}")
    total = {key: sum(counts[key] for _, counts, _ in results.values()) for key in COUNTED}
    failed = total["failed"] + total["errors"] + (contracts != 0)
    print(f"total: {total['passed']} passed, {failed} failed, {total['skipped']} skipped "
          f"in {time.perf_counter() - started:.0f} s")
    return 0 if contracts == 0 and all(code == 0 for code, _, _ in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
