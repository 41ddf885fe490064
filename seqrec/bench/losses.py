"""``seqrec bench losses``: peak memory and step time of every loss versus catalog size.

Each (loss, catalog) case runs one forward+backward in a fresh subprocess
(``seqrec.bench._loss_case``) that records the RSS high-water mark before the step (after imports
and inputs: ``baseline_mb``) and after a warm-up step plus timed steps (``peak_mb``), the median
step time, and on CUDA ``torch.cuda.max_memory_allocated``. The analytic prediction
(``Loss.predict_bytes``) is recorded next to it; a case predicted not to fit is skipped, not run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from seqrec.errors import ConfigError

# glibc keeps freed blocks below its (dynamic, up to 32 MiB) mmap threshold in the heap, so two
# same-size buffers that are never live together can both show in the RSS high-water mark. A fixed
# 1 MiB threshold returns every large block to the OS on free: the peak RSS then tracks the peak of
# live memory, which is what Loss.predict_bytes models. Set SEQREC_BENCH_MALLOC=default to opt out.
_CASE_ENV = {"PYTHONUNBUFFERED": "1"}
if os.environ.get("SEQREC_BENCH_MALLOC") != "default":
    _CASE_ENV["MALLOC_MMAP_THRESHOLD_"] = "1048576"

COLUMNS = ["loss", "catalog", "tokens", "dim", "status", "baseline_mb", "peak_mb", "net_mb", "predicted_mb",
           "step_s", "params", "note"]
# on CUDA the loss's memory is the device's: torch.cuda.max_memory_allocated, net of what was
# allocated before the step (RSS columns stay: they show the host side)
CUDA_COLUMNS = ["loss", "catalog", "tokens", "dim", "status", "cuda_baseline_mb", "cuda_peak_mb", "cuda_net_mb",
                "predicted_mb", "step_s", "baseline_mb", "peak_mb", "params", "note"]


def available_mb(device: str) -> float:
    """Memory a new process can still use: MemAvailable on CPU, free device memory on CUDA."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.mem_get_info()[0] / 2**20
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("inf")


def _ints(text: str, opt: str) -> list[int]:
    try:
        vals = [int(float(v)) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{opt}: expected comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise ConfigError(f"{opt}: expected positive integers, got {text!r}")
    return vals


def run_cases(losses: list[str], catalogs: list[int], tokens: int, dim: int, seq_len: int, device: str,
              repeats: int = 3, timeout_s: float = 1800, log=print) -> list[dict[str, Any]]:
    """Run every case in a fresh subprocess; return one record per case (see module docstring)."""
    from seqrec.registry import LOSSES

    records = []
    for c in catalogs:
        for name in losses:
            loss = LOSSES.build(name)
            params = loss.get_params()
            predicted = loss.predict_bytes(tokens, c, dim) / 2**20
            rec: dict[str, Any] = {"loss": name, "catalog": c, "tokens": tokens, "dim": dim, "peak_mb": None,
                                   "baseline_mb": None, "step_s": None, "predicted_mb": round(predicted, 1),
                                   "params": params, "status": "ok", "note": ""}
            inputs_mb = (tokens + c) * dim * 4 / 2**20
            avail = available_mb(device)
            if predicted + inputs_mb > 0.85 * avail:
                rec.update(status="skipped", note=f"predicted {predicted / 1024:.1f} GB > available "
                                                  f"{avail / 1024:.1f} GB")
                log(f"{name:>16} C={c:>8}: skipped ({rec['note']})")
                records.append(rec)
                continue
            spec = {"loss": name, "params": params, "catalog": c, "tokens": tokens, "dim": dim,
                    "seq_len": seq_len, "device": device, "repeats": repeats}
            try:
                proc = subprocess.run([sys.executable, "-m", "seqrec.bench._loss_case", json.dumps(spec)],
                                      capture_output=True, text=True, timeout=timeout_s,
                                      env={**os.environ, **_CASE_ENV})
                if proc.returncode != 0:
                    err = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
                    if proc.returncode < 0:
                        err = f"killed by signal {-proc.returncode} (out of memory?)"
                    rec.update(status="failed", note=err[:200])
                else:
                    rec.update(json.loads(proc.stdout.strip().splitlines()[-1]))
                    rec["net_mb"] = round(rec["peak_mb"] - rec["baseline_mb"], 1)
            except subprocess.TimeoutExpired:
                rec.update(status="failed", note=f"timed out after {timeout_s:.0f} s")
            log(f"{name:>16} C={c:>8}: {rec['status']} net {rec.get('net_mb')} MB "
                f"(predicted {rec['predicted_mb']}) step {rec['step_s']} s {rec['note']}")
            records.append(rec)
    return records


def plot(records: list[dict[str, Any]], path: Path, key: str = "net_mb") -> None:
    """Log-log net peak memory (``key``: peak − baseline) versus catalog size, one line per loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from seqrec.io import atomic_path

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(r["loss"] for r in records):
        pts = [(r["catalog"], max(r[key], 0.1)) for r in records
               if r["loss"] == name and r["status"] == "ok"]
        if pts:
            ax.plot(*zip(*pts, strict=False), marker="o", label=name)
        skipped = [(r["catalog"], r["predicted_mb"]) for r in records
                   if r["loss"] == name and r["status"] == "skipped"]
        if skipped:
            ax.scatter(*zip(*skipped, strict=False), marker="x", color="grey")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("catalog size C")
    ax.set_ylabel("net peak memory of one step (MB)")
    ax.set_title("Loss memory vs catalog (x = skipped, at its predicted size)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


@click.command("losses")
@click.option("--catalog", default="10000,100000,1000000", show_default=True,
              help="Catalog sizes, comma-separated.")
@click.option("--tokens", default=12800, show_default=True, help="Positions N per step.")
@click.option("--dim", default=64, show_default=True, help="Hidden size d.")
@click.option("--losses", "losses_", default="ce,ce_chunked,bce,gbce,sampled_softmax", show_default=True,
              help="Registered loss names, comma-separated.")
@click.option("--seq-len", default=200, show_default=True, help="Positions per sequence.")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]))
@click.option("--repeats", default=3, show_default=True, help="Timed steps after warm-up.")
@click.option("--timeout", "timeout_s", default=1800.0, show_default=True, help="Seconds per case.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
def command(catalog: str, tokens: int, dim: int, losses_: str, seq_len: int, device: str, repeats: int,
            timeout_s: float, out: str) -> None:
    """Peak memory (net of the process baseline) and step time of each loss vs catalog size."""
    from seqrec.bench.common import write_results
    from seqrec.registry import LOSSES

    names = [s.strip() for s in losses_.split(",") if s.strip()]
    unknown = [s for s in names if s not in LOSSES]
    if unknown or not names:
        raise ConfigError(f"--losses: unknown loss {', '.join(unknown) or '(none)'}; "
                          f"known: {', '.join(LOSSES.names())}")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: CUDA is not available")
    catalogs = _ints(catalog, "--catalog")
    if tokens < 1 or dim < 1 or seq_len < 1:
        raise ConfigError("--tokens, --dim and --seq-len must be positive")
    records = run_cases(names, catalogs, tokens, dim, seq_len, device, repeats, timeout_s,
                        log=lambda m: click.echo(m, err=True))
    for r in records:
        r.setdefault("net_mb", None)
        if device == "cuda":
            ok = r.get("cuda_peak_mb") is not None
            r["cuda_net_mb"] = round(r["cuda_peak_mb"] - r["cuda_baseline_mb"], 1) if ok else None
    cmd = (f"seqrec bench losses --catalog {catalog} --tokens {tokens} --dim {dim} --losses {losses_} "
           f"--seq-len {seq_len} --device {device} --out {out}")
    cols = CUDA_COLUMNS if device == "cuda" else COLUMNS
    path = write_results(out, records, cols, "Loss memory and time", cmd)
    plot(records, path / "losses.png", key="cuda_net_mb" if device == "cuda" else "net_mb")
    click.echo((path / "table.md").read_text())
