"""``seqrec bench data``: wall time and peak RSS to prepare datasets, each case in a fresh process.

Cases (each a subprocess, so ``ru_maxrss`` is that case's own high-water mark):
- ``ml-1m prepare``: read + preprocess + split + write a prepared dir (from --data-dir);
- ``ml-1m load``: re-read that prepared dir;
- ``synthetic-20m write-csv``: generate ML-20M-shaped data and write it as a MovieLens ``ratings.csv``
  (set-up, not part of the target);
- ``synthetic-20m prepare-csv``: prepare that ``ratings.csv`` like a raw ML-20M download (the target:
  < 60 s and < 4 GB peak RSS on the 2-core reference machine);
- ``synthetic-20m prepare-generated``: ``seqrec data prepare synthetic:ml-20m`` end to end;
- ``synthetic-20m load``: re-read the prepared dir.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

COLUMNS = ["dataset", "case", "interactions", "users", "items", "wall_s", "peak_rss_mb", "target", "status"]
TARGET = {"wall_s": 60.0, "peak_rss_mb": 4096.0}


def _write_csv(spec: dict[str, Any]) -> dict[str, Any]:
    """Generate ML-20M-shaped data and write it as a MovieLens ``ratings.csv`` -> its stats."""
    import polars as pl

    from seqrec.data.synthetic import generate, params_for

    df = generate(params_for("ml-20m", n_users=spec["n_users"]))
    df = df.select(
        pl.col("user").alias("userId"),
        pl.col("item").alias("movieId"),
        ((pl.col("item") % 10) / 2 + 0.5).alias("rating"),
        "timestamp",
    )
    df.write_csv(spec["path"])
    return {"interactions": df.height, "users": df["userId"].n_unique(), "items": df["movieId"].n_unique()}


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one case in this (fresh) process -> its record (wall time excludes interpreter start-up)."""
    import resource

    t0 = time.perf_counter()
    from seqrec.data import load_dataset, save_prepared

    case, out = spec["case"], spec.get("out")
    if case == "write-csv":
        stats = _write_csv(spec)
    else:
        if case == "load":
            d = load_dataset(spec["path"])
        else:
            d = load_dataset(
                spec["path"], data_dir=spec.get("data_dir"), fmt=spec.get("fmt"), **spec.get("opts", {})
            )
        if out:
            save_prepared(d, out)
        s = d.meta["stats"]
        stats = {k: s[k] for k in ("interactions", "users", "items")}
    wall = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return {**stats, "wall_s": round(wall, 2), "peak_rss_mb": round(rss_mb, 1)}


def _run(spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    try:
        p = subprocess.run(
            [sys.executable, "-m", "seqrec.bench.data", json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return {"status": f"timeout after {timeout_s:.0f} s"}
    if p.returncode != 0:
        return {"status": "failed: " + ((p.stderr or p.stdout).strip().splitlines() or ["?"])[-1]}
    return {**json.loads(p.stdout.strip().splitlines()[-1]), "status": "ok"}


def _have_ml1m(data_dir: Path | None) -> bool:
    from seqrec.data import cards

    try:
        cards.resolve(cards.get_card("ml-1m"), data_dir, download=False)
        return True
    except Exception:  # noqa: BLE001 - absent data only skips this case
        return False


def _cases(work: Path, data_dir: Path | None, n_users: int, log: Callable[[str], None]
           ) -> list[tuple[str, str, dict[str, Any], bool]]:
    """(dataset, case, spec, counts for the target) of every case, in order."""
    cases = []
    if _have_ml1m(data_dir):
        spec = {"path": "ml-1m", "data_dir": str(data_dir) if data_dir else None, "out": str(work / "ml-1m")}
        cases += [("ml-1m", "prepare", spec, False), ("ml-1m", "load", {"path": str(work / "ml-1m")}, False)]
    else:
        log("ml-1m not found under the data dir: skipped")
    csv = str(work / "ratings.csv")
    return cases + [
        ("synthetic-20m", "write-csv", {"path": csv, "n_users": n_users}, False),
        ("synthetic-20m", "prepare-csv", {"path": csv, "fmt": "movielens-csv", "out": str(work / "s20")}, True),
        ("synthetic-20m", "prepare-generated", {"path": "synthetic:ml-20m", "out": str(work / "s20g"),
                                                "opts": {"synthetic": {"n_users": n_users}}}, True),
        ("synthetic-20m", "load", {"path": str(work / "s20")}, False),
    ]


def run_all(data_dir: Path | None, n_users: int, work_dir: Path | None, timeout_s: float,
            log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run every case (module docstring) in scratch space under ``work_dir``; one record per case."""
    work = Path(tempfile.mkdtemp(prefix="seqrec-bench-data-", dir=work_dir))
    records: list[dict[str, Any]] = []
    try:
        for dataset, name, spec, target in _cases(work, data_dir, n_users, log):
            r = {"dataset": dataset, "case": name, **_run({**spec, "case": name}, timeout_s)}
            if target and r["status"] == "ok":
                r["target"] = "met" if all(r[k] < v for k, v in TARGET.items()) else "MISSED"
            records.append(r)
            log(f"{dataset:>14} {name:<18} ... {r.get('wall_s', '-')} s, {r.get('peak_rss_mb', '-')} MB "
                f"peak RSS ({r['status']})")
            if name == "prepare-csv":  # the ~0.6 GB csv is not needed any more
                (work / "ratings.csv").unlink(missing_ok=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return records


if __name__ == "__main__":
    print(json.dumps(_worker(json.loads(sys.argv[1]))))
