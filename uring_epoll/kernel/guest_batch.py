"""Run a batch of commands inside one booted guest and report each as a line of JSON.

A VM boot costs 10-25 s under emulation, so a test campaign (the selftests, a hundred repeats
of a flaky case, the package's suite) runs in one boot: the host passes the plan as a JSON
file, and this script, run inside the guest, executes each job in order, ``repeat`` times,
each in a process group of its own killed when its ``timeout`` expires, and prints one JSON
object per run on stdout as soon as it ends::

    {"job": NAME, "round": I, "returncode": RC, "timed_out": BOOL, "seconds": S,
     "stdout": TEXT, "stderr": TEXT}

Standard library only (it runs before anything of the package is imported, under ``-I``).
The host side is :func:`read_results`; :func:`write_plan` writes what this script reads.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypedDict

__all__ = ["Job", "main", "read_results", "write_plan"]


class Job(TypedDict, total=False):
    """One entry of a plan. ``name`` and ``argv`` are required."""

    name: str
    argv: list[str]
    cwd: str
    env: dict[str, str]
    timeout: float
    repeat: int


def write_plan(path: str, jobs: Sequence[Job]) -> None:
    """The host's side: write ``jobs`` where the guest will read them."""
    for job in jobs:
        if not job.get("name") or not job.get("argv"):
            raise ValueError(f"a job needs a name and an argv: {job!r}")
    with open(path, "w") as f:
        json.dump({"jobs": list(jobs)}, f)


def read_results(stdout: str) -> list[dict[str, Any]]:
    """The host's side: the result objects in a batch run's stdout (other lines are ignored)."""
    results = []
    for line in stdout.splitlines():
        if line.startswith('{"job": '):
            try:
                results.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by a crash of the guest
    return results


def _run_one(job: Job, round_: int) -> dict[str, Any]:
    env = dict(os.environ)
    env.update(job.get("env", {}))
    started = time.monotonic()
    timed_out = False
    proc = subprocess.Popen(
        job["argv"],
        cwd=job.get("cwd"),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=job.get("timeout", 600.0))
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        out, err = proc.communicate()
    return {
        "job": job["name"],
        "round": round_,
        "returncode": proc.returncode,
        "timed_out": timed_out,
        "seconds": round(time.monotonic() - started, 3),
        "stdout": out,
        "stderr": err,
    }


def run_plan(jobs: Iterable[Job], write: Any = None) -> int:
    """Run every job; write each result line; return how many runs failed to start."""
    write = write or (lambda line: (sys.stdout.write(line + "\n"), sys.stdout.flush()))
    failures = 0
    for job in jobs:
        for round_ in range(int(job.get("repeat", 1))):
            try:
                result = _run_one(job, round_)
            except OSError as exc:
                failures += 1
                result = {
                    "job": job["name"],
                    "round": round_,
                    "returncode": None,
                    "timed_out": False,
                    "seconds": 0.0,
                    "stdout": "",
                    "stderr": f"cannot start {job['argv'][0]!r}: {exc}",
                }
            # "job" first: read_results() recognises result lines by their start.
            write(json.dumps(result))
    return failures


def main(argv: Sequence[str] | None = None) -> int:
    """``guest_batch.py PLAN.json``: run the plan, results on stdout; exit 1 if a job could
    not be started (a job's own failure is in its result, not in this exit status)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        sys.stderr.write("usage: guest_batch.py PLAN.json\n")
        return 2
    with open(args[0]) as f:
        plan: Mapping[str, Any] = json.load(f)
    return 1 if run_plan(plan["jobs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
