"""`seqrec data` commands and every bad input: exit code 2, one line, nothing half-written."""

from __future__ import annotations

import hashlib
import io
import urllib.error
import zipfile

import pytest

from seqrec.cli import main
from seqrec.data import FORMATS, cards, load_dataset


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_help_lists_formats(capsys):
    rc, out, _ = run(capsys, "data", "--help")
    assert rc == 0
    for fmt in FORMATS:  # every reader the library has (test_data_readers pins the exact set)
        assert fmt in out


def test_stats_plain_numbers(capsys, tmp_path):
    p = tmp_path / "u.data"
    p.write_text("".join(f"{u}\t{i}\t3\t{100 + i}\n" for u in (1, 2, 3) for i in range(1, 5)))
    rc, out, _ = run(capsys, "data", "stats", str(p))
    assert rc == 0
    assert "users          3" in out and "items          4" in out and "interactions   12" in out
    assert "density" in out and "median" in out


def test_prepare_then_stats_from_dir(capsys, tmp_path):
    out_dir = tmp_path / "prep"
    rc, out, _ = run(capsys, "data", "prepare", "synthetic", "--out", str(out_dir), "--min-user", "5")
    assert rc == 0 and (out_dir / "meta.json").is_file()
    d = load_dataset(out_dir)
    assert d.meta["preprocessing"]["min_user"] == 5 and d.full.lengths.min() >= 5
    rc, out2, _ = run(capsys, "data", "stats", str(out_dir))
    assert rc == 0 and f"users          {d.n_users}" in out2


def bad(tmp_path, name, content: bytes):
    p = tmp_path / name
    p.write_bytes(content)
    return str(p)


@pytest.mark.parametrize(
    "case,argv_tail,needle",
    [
        ("empty", ("--format", "csv"), "empty file"),
        ("missing_col", ("--format", "csv"), "missing column"),
        ("bad_time", ("--format", "csv"), "timestamp"),
        ("bad_utf8", ("--format", "csv"), "UTF-8"),
        ("bad_utf8_s3rec", ("--format", "s3rec"), "UTF-8"),
        ("unknown_format", ("--format", "bogus"), "bogus"),
        ("kcore_empty", ("--format", "csv", "--min-user", "50"), "k-core"),
        ("no_format", (), "--format"),
    ],
)
def test_bad_inputs_exit_2(capsys, tmp_path, case, argv_tail, needle):
    files = {
        "empty": b"",
        "missing_col": b"usr,item,timestamp\n1,2,3\n",
        "bad_time": b"user,item,timestamp\n1,2,notatime\n",
        "bad_utf8": b"user,item,timestamp\n\xff\xfe,2,3\n",
        "bad_utf8_s3rec": b"1 2 3\n\xff\xfe 2\n",
        "unknown_format": b"user,item,timestamp\n1,2,3\n",
        "kcore_empty": b"user,item,timestamp\n1,2,3\n",
        "no_format": b"user,item,timestamp\n1,2,3\n",
    }
    path = bad(tmp_path, f"{case}.txt", files[case])
    out_dir = tmp_path / "out"
    rc, out, err = run(capsys, "data", "prepare", path, "--out", str(out_dir), *argv_tail)
    assert rc == 2
    assert needle in err and "Traceback" not in err
    if case not in (
        "unknown_format",
    ):  # click's usage errors take 3 lines; ours are one line naming the file
        assert len(err.strip().splitlines()) == 1 and path in err
    assert not out_dir.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{case}.txt"]  # nothing half-written


def test_unwritable_out_dir(capsys, tmp_path):
    blocker = tmp_path / "f"
    blocker.write_text("")
    rc, _, err = run(capsys, "data", "prepare", "synthetic", "--out", str(blocker / "sub"))
    assert rc == 2 and "cannot write" in err and len(err.strip().splitlines()) == 1


def test_unknown_dataset_name(capsys, tmp_path):
    rc, _, err = run(capsys, "data", "stats", "no-such-dataset", "--data-dir", str(tmp_path))
    assert rc == 2 and "unknown dataset 'no-such-dataset'" in err and "ml-1m" in err


def test_cards_are_complete():
    want = {"ml-1m", "ml-20m", "ml-100k", "amazon-beauty", "amazon-sports", "amazon-games", "synthetic"}
    assert want <= set(cards.all_cards())
    for name, card in cards.all_cards().items():
        for key in ("description", "citation", "licence"):
            assert card.get(key), f"{name} lacks {key}"
        if name != "synthetic":
            assert any(e.get("url") for e in card["files"]), f"{name} has no download url"
            assert all(e.get("format") and e.get("path") for e in card["files"])


def fake_card(tmp_path, payload: bytes, checksum: str | None, member: str | None):
    src = tmp_path / "remote.bin"
    src.write_bytes(payload)
    return {
        "name": "toy",
        "files": [
            {
                "path": "toy/u.data",
                "format": "ml-100k",
                "url": src.as_uri(),
                "member": member,
                "checksum": checksum,
            }
        ],
    }


def zipped(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(name, data)
    return buf.getvalue()


def test_download_zip_member_with_checksum(tmp_path):
    blob = zipped("toy/u.data", b"1\t2\t3\t4\n")
    card = fake_card(tmp_path, blob, "md5:" + hashlib.md5(blob).hexdigest(), "toy/u.data")
    path, entry = cards.resolve(card, tmp_path / "data")
    assert path.read_bytes() == b"1\t2\t3\t4\n" and entry["format"] == "ml-100k"
    assert sorted(p.name for p in path.parent.iterdir()) == ["u.data"]  # archive removed


def test_download_checksum_mismatch(tmp_path):
    blob = zipped("toy/u.data", b"1\t2\t3\t4\n")
    card = fake_card(tmp_path, blob, "md5:" + "0" * 32, "toy/u.data")
    with pytest.raises(cards.DataError, match="checksum mismatch"):
        cards.resolve(card, tmp_path / "data")
    assert list((tmp_path / "data" / "toy").iterdir()) == []


def test_offline_error_says_where_to_put_the_file(tmp_path, monkeypatch):
    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(cards.urllib.request, "urlopen", offline)
    monkeypatch.setenv("SEQREC_DATA", str(tmp_path / "cache"))
    with pytest.raises(cards.DataError) as e:
        load_dataset("ml-100k")
    msg = str(e.value)
    assert "no network" in msg and str(tmp_path / "cache" / "ml-100k" / "u.data") in msg and "\n" not in msg


def test_dataset_options_decorator_is_reusable(tmp_path):
    import click
    from click.testing import CliRunner

    from seqrec.cli.data import dataset_options

    seen = {}

    @click.command()
    @dataset_options
    def fit(data_dir, fmt):
        seen.update(data_dir=data_dir, fmt=fmt)

    r = CliRunner().invoke(fit, ["--data-dir", str(tmp_path), "--format", "sasrec"])
    assert r.exit_code == 0 and seen == {"data_dir": tmp_path, "fmt": "sasrec"}
