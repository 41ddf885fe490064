"""Run one library's runner in a subprocess: wall-clock limit, peak RSS, a one-line error.

Peak RSS is the child's own ``ru_maxrss`` from ``os.wait4`` (the kernel's high-water mark of the
runner process, the way ``/usr/bin/time -v`` reports it), so runs measured one after another do
not mix. Every library gets the same thread settings: ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` in
the environment and ``torch.set_num_threads`` in the runner. A memory limit, when given, is
watched the same way a user would watch ``top``: the resident memory of the runner's whole process
group, every 0.5 s; past it the group is killed and the record says so ("out of memory"), so a peer
that cannot hold a dataset is a measured row rather than a machine taken down.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from seqrec.errors import shorten

_NOISE = ("warning", "warn(", "tip:", "  ")  # lines that are not the failure's last word


def last_error_line(log: str) -> str:
    """The line that says why a runner failed: the last line of the log that is not a warning or an
    indented traceback line (Python prints ``ExcType: message`` last)."""
    lines = [ln for ln in log.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if not ln.lower().startswith(_NOISE) and "Warning:" not in ln:
            return shorten(ln.strip(), 240)
    return shorten(lines[-1].strip(), 240) if lines else "no output"


def run_runner(python: str | os.PathLike, script: str | os.PathLike, settings: dict[str, Any], work: Path,
               timeout_s: float, threads: int, pythonpath: str | None = None,
               max_rss_mb: float | None = None) -> dict[str, Any]:
    """Run ``python script settings.json`` in ``work`` -> the runner's result.json plus ``wall_s``,
    ``peak_rss_mb`` and ``error`` (None, or the one-line reason: exit status, timeout, memory limit,
    missing output). ``pythonpath``: the child's PYTHONPATH (None: unset, so a peer sees only its own
    environment). ``max_rss_mb``: kill the runner once its process group holds more resident memory."""
    work.mkdir(parents=True, exist_ok=True)
    for stale in ("result.json", "topk.parquet"):  # a reused --work-dir must not pass off an old run
        (work / stale).unlink(missing_ok=True)
    settings = {**settings, "out": str(work)}
    (work / "settings.json").write_text(json.dumps(settings, indent=1))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore",
               TQDM_DISABLE="1", **({"PYTHONPATH": pythonpath} if pythonpath else {}))
    t0 = time.perf_counter()
    with open(work / "log.txt", "w") as log:
        proc = subprocess.Popen([str(python), str(script), str(work / "settings.json")], cwd=work, stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
        status, usage, stopped = _wait(proc, timeout_s, max_rss_mb)
    wall = time.perf_counter() - t0
    rec: dict[str, Any] = {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024 if usage else None, "error": None}
    result = work / "result.json"
    if stopped == "time":
        rec["error"] = f"timed out after {timeout_s:.0f} s"
    elif stopped == "memory":
        rec["error"] = (f"out of memory: its processes passed the {max_rss_mb / 1024:.1f} GB limit after {wall:.0f} s "
                        "(killed)")
    elif status < 0:  # a signal, most often the kernel's out-of-memory killer (SIGKILL)
        rec["error"] = (f"killed by signal {-status} after {wall:.0f} s"
                        + (" (the kernel's out-of-memory killer?)" if -status == signal.SIGKILL else ""))
    elif status != 0:
        rec["error"] = last_error_line((work / "log.txt").read_text(errors="replace"))
    elif not result.exists() or not (work / "topk.parquet").exists():
        rec["error"] = "the runner wrote no result.json / topk.parquet"
    if rec["error"] is None:
        rec.update(json.loads(result.read_text()))
    return rec


def _wait(proc: subprocess.Popen, timeout_s: float, max_rss_mb: float | None) -> tuple[int, Any, str | None]:
    """Wait for ``proc`` -> (exit code, rusage, why it was stopped: None, "time" or "memory"); past
    ``timeout_s`` or ``max_rss_mb`` its process group is killed."""
    deadline, polls = time.monotonic() + timeout_s, 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage, None
        polls += 1
        stop = "time" if time.monotonic() > deadline else None
        if stop is None and max_rss_mb is not None and polls % 3 == 0 and group_rss_mb(proc.pid) > max_rss_mb:
            stop = "memory"
        if stop:
            os.killpg(proc.pid, signal.SIGKILL)
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage, stop
        time.sleep(0.2)


def group_rss_mb(pgid: int) -> float:
    """Resident memory (MB) of process group ``pgid`` (Linux ``/proc``; 0 elsewhere): one process's
    RSS, or for several the sum of their proportional shares (PSS: a page that forked workers share
    with their parent is split between them, not counted once per process)."""
    page, pids, total = os.sysconf("SC_PAGE_SIZE"), [], 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
        except (OSError, IndexError):  # the process ended meanwhile
            continue
        if int(fields[2]) == pgid:
            pids.append(stat.parent)
            total += int(fields[21]) * page  # rss, in pages
    if len(pids) < 2:
        return total / 2**20
    pss = 0
    for proc in pids:
        try:
            pss += next(int(ln.split()[1]) for ln in (proc / "smaps_rollup").read_text().splitlines()
                        if ln.startswith("Pss:")) * 1024
        except (OSError, StopIteration):  # ended meanwhile, or a kernel without smaps_rollup
            continue
    return pss / 2**20
