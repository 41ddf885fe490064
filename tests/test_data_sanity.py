"""Data sanity (issue #18): rows that are not interactions are dropped with a warning or refused.

Each fault through the CLI (exit code, one line on stderr) and, where the numbers matter, through
``load_dataset``: repeated header rows, unparseable lines, implausible timestamps, a mostly empty id
column, ``data prepare`` into an existing directory; and a clean real dataset that stays silent.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from seqrec.cli import main
from seqrec.data import load_dataset, load_frame
from seqrec.errors import DataError, SeqrecWarning, shorten
from tests.conftest import SHARED_DATA

HEADER = "userId,movieId,rating,timestamp"
ROOT = Path(__file__).resolve().parents[1]


def ratings(n: int, seed: int, t0: int = 1_000_000_000, unit: int = 1) -> list[str]:
    """``n`` MovieLens-csv rows: users 1..50, items 1..80, epoch times from ``t0`` (× ``unit``)."""
    rng = np.random.default_rng(seed)
    u, i, t = rng.integers(1, 51, n), rng.integers(1, 81, n), t0 + rng.integers(0, 10**7, n)
    r = rng.integers(1, 6, n)
    return [f"{a},{b},{c}.0,{d * unit}" for a, b, c, d in zip(u, i, r, t, strict=True)]


def write(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture
def twice(tmp_path) -> str:
    """Two MovieLens exports concatenated: the header line appears again at line 1002."""
    return write(tmp_path / "ratings.csv", [HEADER, *ratings(1000, 0), HEADER, *ratings(1000, 1)])


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def line_of(out: str, key: str) -> str:
    return next(x for x in out.splitlines() if x.startswith(f"{key} "))


def test_repeated_header_is_dropped_with_a_warning(capsys, twice):
    with pytest.warns(SeqrecWarning, match=r"1 repeated header row \(first at line 1002: 'userId,movieId"):
        rc, out, _ = run(capsys, "data", "stats", twice, "--format", "movielens-csv")
    assert rc == 0
    assert line_of(out, "users").split()[1] == "50" and line_of(out, "items").split()[1] == "80"
    assert line_of(out, "interactions").split()[1] == "2000"
    assert "repeated header rows 1" in line_of(out, "dropped")
    with pytest.warns(SeqrecWarning):
        d = load_dataset(twice, fmt="movielens-csv")
    assert d.meta["dropped"]["repeated header rows"] == 1 and d.meta["dropped"]["unparseable rows"] == 0
    assert d.user_ids.dtype.kind == "i" and "userId" not in d.user_ids.astype(str).tolist()


def test_repeated_header_cli_prints_one_warning_line(twice):
    """The real command line: exit 0, a ``warning:`` line on stderr, the true user count."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "seqrec.cli", "data", "stats", twice, "--format", "movielens-csv"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert [x for x in p.stderr.splitlines() if x] == [
        f"warning: {twice}: 1 repeated header row (first at line 1002: '{HEADER}'); dropped it"]
    assert line_of(p.stdout, "users").split()[1] == "50"


def test_repeated_header_strict_exits_2(capsys, twice):
    rc, _, err = run(capsys, "data", "stats", twice, "--format", "movielens-csv", "--strict")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "1 repeated header row" in err and "line 1002" in err and "strict" in err
    with pytest.raises(DataError, match="repeated header row"):
        load_dataset(twice, fmt="movielens-csv", strict=True)


def test_mostly_unparseable_exits_2_naming_the_first_bad_line(capsys, tmp_path):
    # a tab-separated file read as MovieLens csv: every data line has one field
    good = [x.replace(",", "\t") for x in ratings(100, 2)]
    p = write(tmp_path / "r.csv", [HEADER, *ratings(50, 3), *good])
    rc, _, err = run(capsys, "data", "stats", p, "--format", "movielens-csv")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "100 of 150 rows (67%) cannot be read" in err and f"line 52: {good[0]!r}" in err


def test_a_few_unparseable_lines_are_dropped_with_a_warning(tmp_path):
    lines = [HEADER, *ratings(500, 4), "7,x,4.0,1000000000", "7,8,4.0", *ratings(500, 5)]
    p = write(tmp_path / "r.csv", lines)
    with pytest.warns(SeqrecWarning, match=r"2 unparseable rows \(first at line 502: '7,x,4.0,1000000000': "
                                           r"bad or missing item\); dropped them"):
        d = load_dataset(p, fmt="movielens-csv")
    assert d.meta["stats"]["interactions"] == 1000 and d.meta["dropped"]["unparseable rows"] == 2


def test_implausible_timestamps_warn_or_refuse(capsys, tmp_path):
    ms = ratings(5, 6, unit=1000)  # five times in milliseconds among seconds
    p = write(tmp_path / "r.csv", [HEADER, *ratings(500, 7), *ms, *ratings(500, 8)])
    with pytest.warns(SeqrecWarning, match=rf"5 implausible timestamps \(before 1990-01-01 or after now \+ 1 day; "
                                           rf"first at line 502: '{ms[0]}'\)"):
        d = load_dataset(p, fmt="movielens-csv")
    assert d.meta["dropped"]["implausible timestamps"] == 5 and d.meta["stats"]["interactions"] == 1000
    rc, _, err = run(capsys, "data", "stats", p, "--format", "movielens-csv", "--strict")
    assert rc == 2 and "5 implausible timestamps" in err and "line 502" in err
    # a third of the file in milliseconds: a unit mix-up, refused
    q = write(tmp_path / "q.csv", [HEADER, *ratings(200, 9), *ratings(100, 10, unit=1000)])
    rc, _, err = run(capsys, "data", "stats", q, "--format", "movielens-csv")
    assert rc == 2 and "100 of 300 timestamps" in err and "milliseconds" in err and "line 202" in err


def test_times_of_another_unit_are_an_order_not_a_fault():
    """A column that is not epoch seconds at all (a step counter) is used for its order, silently."""
    frame = pl.DataFrame({"user": [1, 1, 1, 2, 2, 2], "item": [1, 2, 3, 3, 2, 1], "timestamp": [3, 2, 1, 1, 2, 3]})
    with warnings.catch_warnings():
        warnings.simplefilter("error", SeqrecWarning)
        d = load_frame(frame)
    assert d.full.row(0).tolist() == [3, 2, 1]


def test_mostly_empty_id_column_exits_2(capsys, tmp_path):
    rows = [f",{i},{1_000_000_000 + i}" for i in range(60)] + [f"{i % 5},{i},{1_000_000_000 + i}" for i in range(40)]
    p = write(tmp_path / "e.csv", ["user,item,timestamp", *rows])
    rc, _, err = run(capsys, "data", "stats", p, "--format", "csv")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "the user column is mostly empty (60 of 100 rows; first at line 2: ',0,1000000000')" in err


def test_a_few_rows_without_ids_from_a_frame(tmp_path):
    frame = pl.DataFrame({"user": [1, 1, None, 2, 2, 2, 3, 3, 3, 1], "item": list(range(1, 11))})
    with pytest.warns(SeqrecWarning, match=r"1 row without ids \(first at row 3: 'user=None, item=3"):
        d = load_frame(frame)
    assert d.meta["dropped"]["rows without ids"] == 1 and d.meta["stats"]["interactions"] == 9
    with pytest.raises(DataError, match="row without ids"):
        load_frame(frame, strict=True)


def test_blank_lines_and_preprocessing_drops_are_counted(capsys, tmp_path):
    lines = ratings(300, 11)
    p = write(tmp_path / "r.csv", [HEADER, *lines[:100], "", *lines[100:]])
    with warnings.catch_warnings():
        warnings.simplefilter("error", SeqrecWarning)
        d = load_dataset(p, fmt="movielens-csv", min_rating=4.5, dedup=True)
    below = sum(float(x.split(",")[2]) < 4.5 for x in lines)
    assert d.meta["dropped"]["blank lines"] == 1 and d.meta["dropped"]["below min_rating"] == below > 0
    d = load_dataset(p, fmt="movielens-csv", dedup=True, min_user=8)
    n_pairs = len({x.rsplit(",", 2)[0] for x in lines})
    assert d.meta["dropped"]["duplicates"] == 300 - n_pairs
    assert d.meta["dropped"]["k-core"] == n_pairs - d.meta["stats"]["interactions"]


def test_prepare_refuses_an_existing_directory_unless_overwrite(capsys, tmp_path, twice):
    out = tmp_path / "prep"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc, _, err = run(capsys, "data", "prepare", "synthetic", "--out", str(out))
    assert rc == 2 and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    rc, _, err = run(capsys, "data", "prepare", "synthetic", "--out", str(out), "--overwrite")
    assert rc == 0, err
    assert not (out / "keep.txt").exists() and load_dataset(out).meta["name"] == "synthetic"
    rc, _, err = run(capsys, "data", "prepare", "synthetic", "--out", str(out))  # a prepared dir too
    assert rc == 2 and "--overwrite" in err


def test_fit_strict_refuses_the_data(capsys, tmp_path, twice):
    rc, _, err = run(capsys, "fit", "--dataset", twice, "--format", "movielens-csv", "--strict",
                     "--out", str(tmp_path / "run"), "--set", "train.num_threads=1", "--set", "train.epochs=1")
    assert rc == 2 and "repeated header row" in err and "strict" in err
    assert not (tmp_path / "run").exists()


def test_shorten_cuts_at_a_word_boundary():
    assert shorten("short") == "short"
    assert shorten("one\nline only") == "one line only"
    assert shorten("alpha beta gamma delta", 12) == "alpha beta…"
    assert shorten("1,2,3,4,5,6,7,8,9", 8) == "1,2,3,4…"


@pytest.mark.skipif(not (SHARED_DATA / "ml-100k" / "u.data").is_file(), reason="ml-100k not in shared/data")
def test_ml100k_loads_silently_with_the_same_statistics():
    with warnings.catch_warnings():
        warnings.simplefilter("error", SeqrecWarning)
        d = load_dataset("ml-100k", data_dir=SHARED_DATA)
    s = d.meta["stats"]
    assert (s["users"], s["items"], s["interactions"]) == (943, 1682, 100_000)
    assert d.meta["fingerprint"] == "9d9431808742e6aa"  # as before the checks existed
    assert not any(d.meta["dropped"].values())
