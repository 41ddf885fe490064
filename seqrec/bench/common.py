"""Shared output for every ``seqrec bench`` command: results.json, table.md, machine info."""

from __future__ import annotations

import datetime as _dt
import os
import platform
from pathlib import Path
from typing import Any

from seqrec.io import write_json, write_text


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "torch": torch.__version__,
            "date": _dt.date.today().isoformat()}


def markdown_table(records: list[dict[str, Any]], columns: list[str]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
        if isinstance(v, dict):
            return ", ".join(f"{k}={x}" for k, x in v.items())
        return "" if v is None else str(v)

    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(fmt(r.get(c)) for c in columns) + " |\n" for r in records)


def write_results(out: str | os.PathLike, records: list[dict[str, Any]], columns: list[str],
                  title: str, command: str) -> Path:
    """Write ``out/results.json`` (a list of flat records) and ``out/table.md``; return ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", records)
    info = machine_info()
    header = (f"# {title}\n\nCommand: `{command}`  \nMachine: {info['cpu']}, {info['cores']} cores"
              f"{', GPU ' + info['gpu'] if info['gpu'] else ''}; torch {info['torch']}; date {info['date']}\n\n")
    write_text(out / "table.md", header + markdown_table(records, columns))
    return out
