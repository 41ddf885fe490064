"""Progress bars for every wait longer than a moment, drawn only where a person watches.

One rule everywhere (data reading and preprocessing, splitting, training epochs, user encoding,
top-k search, index building): a tqdm bar on stderr when stderr is a terminal, nothing in logs,
pipes or files, and nothing at all with ``seqrec --quiet`` (``set_quiet``) or ``SEQREC_QUIET=1``.
A loop's bar appears only once it has run ``SEQREC_PROGRESS_DELAY`` seconds (default 1), so quick
loops print nothing; a bar of named stages (``stages``: a blocking read, an index build) shows at
once, since it cannot update during a stage. Bars are cleared when done (``leave=False``).

Nothing here imports above the standard library and tqdm: every layer may call it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

_quiet = False


def set_quiet(quiet: bool = True) -> None:
    """Silence (or allow again) every progress bar of this process (``seqrec --quiet``)."""
    global _quiet
    _quiet = bool(quiet)


def enabled() -> bool:
    """True when bars are drawn: stderr is a terminal and nobody asked for quiet."""
    if _quiet or os.environ.get("SEQREC_QUIET", "") not in ("", "0"):
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stderr
        return False


def _delay() -> float:
    try:
        return max(0.0, float(os.environ.get("SEQREC_PROGRESS_DELAY", "1")))
    except ValueError:
        return 1.0


def progress(iterable: Iterable[Any] | None = None, *, total: float | None = None, desc: str = "",
             unit: str = "it", leave: bool = False, initial: float = 0, delay: float | None = None) -> Any:
    """A tqdm bar over ``iterable`` (or a manual one: ``.update(n)``), disabled off a terminal;
    ``delay``: seconds before it shows (default ``DELAY``)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, initial=initial, file=sys.stderr,
                disable=not enabled(), delay=_delay() if delay is None else delay, mininterval=0.2)


@contextlib.contextmanager
def stages(desc: str, n: int) -> Iterator[Callable[[str], None]]:
    """A bar of ``n`` named stages: ``with stages("data ml-1m", 3) as stage: stage("reading"); ...``;
    each call closes the stage before it and names the one starting."""
    bar = progress(total=n, desc=desc, unit="stage", delay=0)  # a blocking stage never updates: show at once
    started = [False]

    def stage(name: str) -> None:
        if started[0]:
            bar.update(1)
        started[0] = True
        bar.set_postfix_str(name)

    try:
        yield stage
        if started[0]:
            bar.update(1)
    finally:
        bar.close()
