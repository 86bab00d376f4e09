"""Runs the test suite once per Keras backend, each in its own process, and sums the results.

Usage: `python tests/run_all_backends.py [pytest arguments...]`. Set `BACKENDS=jax,torch` to
run a subset. Exits non-zero if any backend's run fails (including "no tests collected").
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COUNTED = ("passed", "failed", "skipped", "errors")


def run_backend(backend, pytest_arguments):
    environment = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *pytest_arguments]
    print(f"\n=== KERAS_BACKEND={backend}: {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env=environment, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    summary = ""
    for line in process.stdout:
        print(line, end="", flush=True)
        if re.search(r"\d+ (passed|failed|error)", line):
            summary = line
    counts = {key: 0 for key in COUNTED}
    for number, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)", summary):
        counts["errors" if word.startswith("error") else word] += int(number)
    return process.wait(), counts, time.perf_counter() - started


def main():
    backends = os.environ.get("BACKENDS", "tensorflow,jax,torch").split(",")
    results = {backend: run_backend(backend, sys.argv[1:]) for backend in backends}
    print("\nbackend      exit  passed  failed  skipped  errors  seconds")
    for backend, (code, counts, seconds) in results.items():
        print(f"{backend:<12} {code:>4}  {counts['passed']:>6}  {counts['failed']:>6}  "
              f"{counts['skipped']:>7}  {counts['errors']:>6}  {seconds:>7.0f}")
    total = {key: sum(counts[key] for _, counts, _ in results.values()) for key in COUNTED}
    failed = total["failed"] + total["errors"]
    print(f"total: {total['passed']} passed, {failed} failed, {total['skipped']} skipped")
    return 0 if all(code == 0 for code, _, _ in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
