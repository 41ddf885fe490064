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
from collections.abc import Callable
from typing import Any

from seqrec.errors import shorten

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


def _run_case(spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Measure one case in a fresh ``seqrec.bench._loss_case`` process -> the fields to add to its record."""
    try:
        proc = subprocess.run([sys.executable, "-m", "seqrec.bench._loss_case", json.dumps(spec)],
                              capture_output=True, text=True, timeout=timeout_s, env={**os.environ, **_CASE_ENV})
    except subprocess.TimeoutExpired:
        return {"status": "failed", "note": f"timed out after {timeout_s:.0f} s"}
    if proc.returncode != 0:
        err = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        if proc.returncode < 0:
            err = f"killed by signal {-proc.returncode} (out of memory?)"
        return {"status": "failed", "note": shorten(err)}
    rec = json.loads(proc.stdout.strip().splitlines()[-1])
    rec["net_mb"] = round(rec["peak_mb"] - rec["baseline_mb"], 1)
    if "cuda_peak_mb" in rec:  # on CUDA the loss's memory is the device's, net of what was there before
        rec["cuda_net_mb"] = round(rec["cuda_peak_mb"] - rec["cuda_baseline_mb"], 1)
    return rec


def run_cases(losses: list[str], catalogs: list[int], tokens: int, dim: int, seq_len: int, device: str,
              repeats: int = 3, timeout_s: float = 1800, log: Callable[[str], None] = print
              ) -> list[dict[str, Any]]:
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
                                   "params": params, "status": "ok", "note": "", "net_mb": None}
            if device == "cuda":
                rec["cuda_net_mb"] = None
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
            rec.update(_run_case(spec, timeout_s))
            log(f"{name:>16} C={c:>8}: {rec['status']} net {rec.get('net_mb')} MB "
                f"(predicted {rec['predicted_mb']}) step {rec['step_s']} s {rec['note']}")
            records.append(rec)
    return records
