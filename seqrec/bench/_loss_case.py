"""One case of ``seqrec bench losses``, run in a fresh process so its peak RSS is its own.

Memory: ``baseline_mb`` is the RSS after imports, a tiny warm-up run and the inputs (freed heap
trimmed); ``peak_mb`` is the RSS high-water mark of the step(s) after that (VmHWM, reset through
/proc/self/clear_refs at the baseline), so ``peak_mb - baseline_mb`` is the step's own extra memory.

Usage: ``python -m seqrec.bench._loss_case '<json spec>'``; prints one JSON record on the last line.
The spec holds loss, params, catalog, tokens, dim, seq_len, device, repeats, seed.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time


def _status_mb(key: str) -> float | None:
    """VmRSS / VmHWM of this process image in MiB (None off Linux)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _reset_peak() -> bool:
    """Start a fresh RSS high-water mark at the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trim() -> None:
    """Give freed heap memory back to the OS so the baseline RSS counts live memory only."""
    import gc

    from seqrec.training.trainer import trim_heap

    gc.collect()
    trim_heap()


def run_case(spec: dict) -> dict:
    import torch

    from seqrec.losses import LossContext
    from seqrec.registry import LOSSES

    dev = torch.device(spec["device"])
    n, c, d, seq_len = spec["tokens"], spec["catalog"], spec["dim"], spec["seq_len"]
    loss = LOSSES.build(spec["loss"], **spec.get("params", {}))
    g = torch.Generator(device=dev).manual_seed(spec.get("seed", 0))

    def inputs(n: int, c: int):
        # created in place (no temporaries), so the RSS high-water mark equals the live inputs
        x = torch.empty(n, d, device=dev).normal_(generator=g).requires_grad_()
        w = torch.nn.Parameter(torch.empty(c, d, device=dev).normal_(0.0, 0.1, generator=g))
        y = torch.randint(0, c, (n,), device=dev, generator=g)
        seq = torch.arange(n, device=dev) // seq_len
        rows = int(seq[-1]) + 1
        # history of a sequence = its own targets (what a trainer passes), CSR over rows
        offsets = torch.searchsorted(seq, torch.arange(rows + 1, device=dev))
        pop = 1.0 / torch.arange(1, c + 1, device=dev, dtype=torch.float32)  # Zipf-like popularity
        ctx = LossContext(seq_idx=seq, hist_offsets=offsets, hist_items=y, item_pop=pop, generator=g)
        return x, w, y, ctx

    def step(x, w, y, ctx) -> float:
        x.grad = w.grad = None
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        loss(x, y, w, ctx).backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    # a tiny run first: lazy initialisation (autograd engine, thread pools, kernels) belongs to
    # the process baseline, not to the loss
    step(*inputs(min(n, 2 * seq_len), min(c, 4096)))
    x, w, y, ctx = inputs(n, c)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_base = torch.cuda.memory_allocated() / 2**20
    # Baseline = RSS now; peak = the high-water mark from here on. ru_maxrss is not used for the
    # baseline: across fork+exec it inherits the *parent's* high-water mark (the bench driver's).
    _trim()
    fresh = _reset_peak()
    baseline = _status_mb("VmRSS") if fresh else None
    if baseline is None:  # no /proc: fall back to the process high-water mark
        baseline = _maxrss_mb()
    warm = step(x, w, y, ctx)  # the peak includes the warm-up step
    repeats = max(1, min(spec.get("repeats", 3), int(spec.get("time_budget_s", 60) / max(warm, 1e-3))))
    times = [step(x, w, y, ctx) for _ in range(repeats)]
    peak = _status_mb("VmHWM") if fresh else None
    rec = {"peak_mb": round(peak if peak is not None else _maxrss_mb(), 1), "baseline_mb": round(baseline, 1),
           "step_s": round(statistics.median(times), 4), "warmup_s": round(warm, 4), "repeats": repeats}
    if dev.type == "cuda":
        rec["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        rec["cuda_baseline_mb"] = round(cuda_base, 1)
    return rec


def main() -> None:
    spec = json.loads(sys.argv[1])
    print(json.dumps(run_case(spec)), flush=True)


if __name__ == "__main__":
    main()
