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
from pathlib import Path
from typing import Any

import click

COLUMNS = ["dataset", "case", "interactions", "users", "items", "wall_s", "peak_rss_mb", "target", "status"]
TARGET = {"wall_s": 60.0, "peak_rss_mb": 4096.0}


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one case in this (fresh) process -> its record (wall time excludes interpreter start-up)."""
    import resource

    t0 = time.perf_counter()
    from seqrec.data import load_dataset, save_prepared

    case, out = spec["case"], spec.get("out")
    if case == "write-csv":
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
        stats = {
            "interactions": df.height,
            "users": df["userId"].n_unique(),
            "items": df["movieId"].n_unique(),
        }
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


def _plot(records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from seqrec.io import atomic_path

    ok = [r for r in records if r.get("status") == "ok"]
    if not ok:
        return
    labels = [f"{r['dataset']}\n{r['case']}" for r in ok]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, key, unit, limit in (
        (axes[0], "wall_s", "s", TARGET["wall_s"]),
        (axes[1], "peak_rss_mb", "MB", TARGET["peak_rss_mb"]),
    ):
        ax.barh(labels, [r[key] for r in ok], color="tab:blue")
        ax.axvline(limit, color="tab:red", ls="--", lw=1, label=f"20M target {limit:g} {unit}")
        ax.set_xlabel(f"{key} ({unit})")
        ax.invert_yaxis()
        ax.legend(fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle("seqrec data preparation: wall time and peak RSS (fresh process per case)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


@click.command(name="data")
@click.option(
    "--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Results directory."
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where ml-1m lives (default $SEQREC_DATA / ~/.cache/seqrec); ml-1m is skipped if absent.",
)
@click.option(
    "--users",
    "n_users",
    type=click.IntRange(min=100),
    default=138_493,
    show_default=True,
    help="Users of the ML-20M-shaped synthetic set (138,493 ~ 20M interactions).",
)
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Scratch space for the ~0.6 GB ratings.csv and prepared dirs (default: a temp dir).",
)
@click.option(
    "--timeout", "timeout_s", type=float, default=900, show_default=True, help="Per-case limit (s)."
)
def command(out: Path, data_dir: Path | None, n_users: int, work_dir: Path | None, timeout_s: float) -> None:
    """Time and peak RSS to prepare ML-1M and a 20M-interaction synthetic set (fresh process per case)."""
    from seqrec.bench.common import write_results
    from seqrec.data import cards

    work = Path(tempfile.mkdtemp(prefix="seqrec-bench-data-", dir=work_dir))
    records: list[dict[str, Any]] = []

    def case(dataset: str, name: str, spec: dict[str, Any], target: bool = False) -> None:
        click.echo(f"{dataset:>14} {name:<18} ...", nl=False)
        r = {"dataset": dataset, "case": name, **_run({**spec, "case": name}, timeout_s)}
        if target and r["status"] == "ok":
            r["target"] = "met" if all(r[k] < v for k, v in TARGET.items()) else "MISSED"
        records.append(r)
        click.echo(f" {r.get('wall_s', '-')} s, {r.get('peak_rss_mb', '-')} MB peak RSS ({r['status']})")

    try:
        try:
            cards.resolve(cards.get_card("ml-1m"), data_dir, download=False)
            have_ml1m = True
        except Exception:  # noqa: BLE001 - absent data only skips this case
            have_ml1m = False
        if have_ml1m:
            case(
                "ml-1m",
                "prepare",
                {
                    "path": "ml-1m",
                    "data_dir": str(data_dir) if data_dir else None,
                    "out": str(work / "ml-1m"),
                },
            )
            case("ml-1m", "load", {"path": str(work / "ml-1m")})
        else:
            click.echo("ml-1m not found under the data dir: skipped")
        csv = work / "ratings.csv"
        case("synthetic-20m", "write-csv", {"path": str(csv), "n_users": n_users})
        case(
            "synthetic-20m",
            "prepare-csv",
            {"path": str(csv), "fmt": "movielens-csv", "out": str(work / "s20")},
            target=True,
        )
        csv.unlink(missing_ok=True)
        case(
            "synthetic-20m",
            "prepare-generated",
            {
                "path": "synthetic:ml-20m",
                "opts": {"synthetic": {"n_users": n_users}},
                "out": str(work / "s20g"),
            },
            target=True,
        )
        case("synthetic-20m", "load", {"path": str(work / "s20")})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    argv = (
        " ".join(["seqrec bench data", *sys.argv[sys.argv.index("data") + 1 :]])
        if "data" in sys.argv
        else "seqrec bench data"
    )
    write_results(out, records, COLUMNS, "Data preparation: wall time and peak RSS", argv)
    _plot(records, out / "data.png")
    click.echo(f"wrote {out}/results.json, table.md, data.png")


if __name__ == "__main__":
    print(json.dumps(_worker(json.loads(sys.argv[1]))))
