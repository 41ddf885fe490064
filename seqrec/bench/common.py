"""Shared output for every ``seqrec bench`` command: results.json, table.md and the PNG, machine info."""

from __future__ import annotations

import datetime as _dt
import io
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seqrec.errors import ConfigError
from seqrec.io import atomic_path, write_json, write_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the platform's name elsewhere)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "gpu": gpu, "torch": torch.__version__,
            "date": _dt.date.today().isoformat(), "code": source_version()}


def source_version() -> str | None:
    """``git describe --always --dirty`` of the seqrec source tree the bench runs from (None when it is
    not a git checkout, e.g. an installed wheel): figures recorded over several sessions name their code."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def markdown_table(records: list[dict[str, Any]], columns: list[str]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
        if isinstance(v, dict):
            return ", ".join(f"{k}={x}" for k, x in v.items())
        return "" if v is None else str(v)

    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(fmt(r.get(c)) for c in columns) + " |\n" for r in records)


def write_results(out: str | os.PathLike, records: list[dict[str, Any]], columns: list[str], title: str,
                  command: str, figure: Figure, png: str, body: str | None = None) -> Path:
    """Write every output of a bench into ``out`` and return ``out``:

    - ``results.json``: ``records`` (a list of flat records);
    - ``table.md``: ``# title``, the command line and the machine, then ``body`` (default: the
      records as a Markdown table of ``columns``);
    - ``png``: ``figure`` (from ``seqrec.bench.plot``).

    Everything is rendered in memory first, so a failing plot or table leaves the previous files
    in place; each file is then replaced atomically.
    """
    out = Path(out)
    buf = io.BytesIO()
    figure.savefig(buf, format="png", dpi=110)
    info = machine_info()
    header = (f"# {title}\n\nCommand: `{command}`  \nMachine: {info['cpu']}, {info['cores']} cores"
              f"{', GPU ' + info['gpu'] if info['gpu'] else ''}; torch {info['torch']}; date {info['date']}"
              f"{'; code ' + info['code'] if info['code'] else ''}\n\n")
    table = header + (markdown_table(records, columns) if body is None else body)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", records)
    write_text(out / "table.md", table)
    with atomic_path(out / png) as tmp:
        tmp.write_bytes(buf.getvalue())
    return out


def int_list(text: str, opt: str) -> list[int]:
    """``"1000,1e6"`` -> ``[1000, 1000000]``; a ConfigError naming ``opt`` unless all are positive."""
    try:
        vals = [int(float(v)) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{opt}: expected comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise ConfigError(f"{opt}: expected positive integers, got {text!r}")
    return vals


def names_list(text: str, registry: Any, opt: str) -> list[str]:
    """Comma-separated names of ``registry`` (``seqrec.registry.LOSSES``, ...), each checked."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise ConfigError(f"{opt}: no {registry.kind} given; known: {', '.join(registry.names())}")
    return [registry.check_name(s, opt) for s in names]
