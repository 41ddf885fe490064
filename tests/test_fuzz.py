"""Hostile inputs (hypothesis): every reader and the config loader give a result or a one-line
``SeqrecError`` for any input -- never another exception type, a multi-line message or a hang.

Kept fast on purpose (a few dozen examples per property, tiny files): it is a smoke net for
crashes, not an exhaustive search. Inputs that once broke something are pinned with ``@example``.
"""

from __future__ import annotations

import contextlib
import io
import json
import signal
import string
import time

import polars as pl
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from seqrec.cli import main
from seqrec.config import DEFAULT_TREE, load_config
from seqrec.data import FORMATS, load_dataset
from seqrec.data.store import PreparedData
from seqrec.errors import SeqrecError

FAST = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
HANG_S = 20  # one tiny input taking this long is a hang


@contextlib.contextmanager
def no_hang(seconds: int = HANG_S):
    """Fail (instead of blocking the suite) when the body runs longer than ``seconds``."""
    def on_alarm(signum, frame):
        raise TimeoutError(f"input took more than {seconds}s: treated as a hang")
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    start = time.monotonic()
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert time.monotonic() - start < seconds


def _one_line(e: SeqrecError) -> None:
    msg = f"error: {e}"  # as the CLI prints it
    assert len(msg.splitlines()) == 1, f"error message is not one line: {msg!r}"
    assert "Traceback" not in msg


def _load_or_error(path, fmt: str) -> None:
    """The contract: a PreparedData, or a one-line SeqrecError. Anything else fails the test."""
    with no_hang():
        try:
            out = load_dataset(str(path), fmt=fmt)
        except SeqrecError as e:
            _one_line(e)
            return
    assert isinstance(out, PreparedData)
    assert out.n_items >= 1 and len(out.user_ids) >= 1
    assert int(out.full.items.min()) >= 1 and int(out.full.items.max()) <= out.n_items


# ------------------------------------------------------------------ strategies
# tokens a reader meets in real and broken files: ids, numbers, dates, separators, quotes, JSON bits
TOKENS = st.one_of(
    st.integers(-3, 12).map(str),
    st.sampled_from(["", " ", "0", "-1", "1.5", "1e9", "9223372036854775808", "nan", "inf", "NA", "null",
                     "2021-03-04", "2021-13-45T99:00", "a", "é", "\"", "\"x,y\"", "'", "::", ":", ",", "\t",
                     "\\", "{", "}", "[", "]", "\x00", "\r", "user", "item", "timestamp", "rating"]),
    st.text(alphabet=string.ascii_letters + string.digits + ",;:\t \"'{}[]-.", max_size=6),
)
SEPS = st.sampled_from([",", "\t", " ", "::", ";", ""])


@st.composite
def text_lines(draw) -> bytes:
    """Lines of separated tokens (the shape of every text format), possibly ragged and odd."""
    sep = draw(SEPS)
    rows = draw(st.lists(st.lists(TOKENS, min_size=0, max_size=5), min_size=0, max_size=8))
    eol = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    text = eol.join(sep.join(r) for r in rows) + draw(st.sampled_from(["", eol]))
    return text.encode(draw(st.sampled_from(["utf-8", "latin-1"])), errors="replace")


@st.composite
def csvish(draw) -> bytes:
    """A header naming plausible columns + rows of random tokens (ragged rows included)."""
    cols = draw(st.lists(st.sampled_from(["user", "item", "timestamp", "rating", "userId", "movieId",
                                          "user_id:token", "item_id:token", "timestamp:float", "x", ""]),
                         min_size=1, max_size=5))
    sep = draw(st.sampled_from([",", "\t", " "]))
    n = len(cols)
    rows = draw(st.lists(st.lists(TOKENS, min_size=max(n - 1, 0), max_size=n + 1), max_size=8))
    return ("\n".join([sep.join(cols)] + [sep.join(r) for r in rows]) + "\n").encode()


JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 2**40), st.floats(allow_nan=True),
                        st.text(max_size=4), st.lists(st.integers(0, 3), max_size=2))


@st.composite
def json_lines(draw) -> bytes:
    """Amazon-review-like JSON lines with missing / mistyped fields and broken lines."""
    keys = st.sampled_from(["reviewerID", "asin", "unixReviewTime", "overall", "other"])
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.integers(0, 5)) == 0:
            lines.append(draw(st.text(max_size=12)))  # not JSON at all
        else:
            lines.append(json.dumps(draw(st.dictionaries(keys, JSON_VALUES, max_size=5))))
    return "\n".join(lines).encode("utf-8", errors="replace")


@st.composite
def parquet_bytes(draw) -> bytes:
    """A real Parquet file with the expected column names but random types and values."""
    n = draw(st.integers(0, 6))
    col = st.one_of(st.lists(st.integers(-2**40, 2**40), min_size=n, max_size=n),
                    st.lists(st.text(max_size=3), min_size=n, max_size=n),
                    st.lists(st.one_of(st.none(), st.floats(allow_nan=True)), min_size=n, max_size=n))
    names = draw(st.lists(st.sampled_from(["user", "item", "timestamp", "rating", "x"]), min_size=1,
                          max_size=4, unique=True))
    frame = pl.DataFrame({c: draw(col) for c in names}, strict=False)
    buf = io.BytesIO()
    frame.write_parquet(buf)
    return buf.getvalue()


ANY_FILE = st.one_of(st.binary(max_size=300), text_lines(), csvish(), json_lines(), parquet_bytes())
FMT_NAMES = sorted(FORMATS)


# ------------------------------------------------------------------ readers
@pytest.mark.parametrize("fmt", FMT_NAMES)
@FAST
@given(content=ANY_FILE)
@example(content=b"")                                  # empty file
@example(content=b"\xff\xfe\x00\x01")                  # not UTF-8
@example(content=b"1 2\n1 3\n1 4\n2 2\n2 3\n2 4\n")    # well formed for several formats
@example(content=b"user,item,timestamp\n1,2,3\n1,3,4\n1,4,5\n")
@example(content=b"user,item\n,\n,\n")                 # nulls only
@example(content=b"\x1f\x8b\x08\x00garbage")            # a broken gzip header
def test_reader_gives_data_or_one_line_error(tmp_path_factory, fmt, content):
    path = tmp_path_factory.mktemp("fz") / "input.txt"
    path.write_bytes(content)
    _load_or_error(path, fmt)


@FAST
@given(content=st.one_of(st.binary(max_size=200), json_lines()))
@example(content=b"not gzip at all")
@example(content=b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03garbage")
def test_gzipped_json_reader_gives_data_or_one_line_error(tmp_path_factory, content):
    """``*.json.gz`` goes through gzip first: broken compression is a DataError, not an OSError."""
    import gzip

    path = tmp_path_factory.mktemp("fz") / "reviews.json.gz"
    as_gzip = content[:1] == b"{"
    path.write_bytes(gzip.compress(content) if as_gzip else content)
    _load_or_error(path, "amazon-json")


@settings(max_examples=15, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(fmt=st.sampled_from(FMT_NAMES), content=ANY_FILE)
@example(fmt="csv", content=b"\x00\x0b\x00")  # a header of control characters, echoed in the message
def test_data_stats_cli_exits_0_or_2_with_one_line(tmp_path_factory, capsys, fmt, content):
    path = tmp_path_factory.mktemp("fz") / "input.dat"
    path.write_bytes(content)
    capsys.readouterr()
    with no_hang():
        rc = main(["data", "stats", str(path), "--format", fmt])
    err = capsys.readouterr().err
    assert rc in (0, 2), err
    if rc == 2:
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


# ------------------------------------------------------------------ config
KEYS = [f"{s}.{k}" for s, keys in DEFAULT_TREE.items() for k in keys] + [
    "model.d", "model.max_len", "model.n_blocks", "loss.n_negatives", "model", "train", "x.y", "train.",
    ".lr", "train.lr.x", "model.name.x", "data.options.synthetic.n_users"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=8), st.sampled_from(["sasrec", "bert4rec", "ce", "sce", "adam", "bf16"]))
YAML_VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.one_of(st.text(max_size=6), st.integers(0, 3)), inner,
                                                 max_size=3)), max_leaves=8)


@st.composite
def config_trees(draw):
    """A YAML mapping shaped like a config (real section and key names) with random values."""
    tree = {}
    for sec in draw(st.lists(st.sampled_from([*DEFAULT_TREE, "optim", "7"]), max_size=4, unique=True)):
        keys = list(DEFAULT_TREE.get(sec, {})) + ["name", "d", "bogus"]
        tree[sec] = draw(st.one_of(SCALARS, st.dictionaries(st.sampled_from(keys), YAML_VALUES, max_size=4)))
    return tree


def _config_or_error(name_or_path, overrides=None) -> None:
    with no_hang():
        try:
            cfg = load_config(name_or_path, overrides)
        except SeqrecError as e:  # ConfigError / DataError are SeqrecErrors
            _one_line(e)
            return
    assert cfg.train.lr > 0 and 10 in cfg.eval.ks


@FAST
@given(doc=st.one_of(config_trees().map(lambda t: yaml.safe_dump(t, allow_unicode=True)),
                     st.lists(YAML_VALUES, max_size=2).map(yaml.safe_dump),
                     st.text(alphabet=string.printable + "é", max_size=80)))
@example(doc="model: {name: [1, 2]}\n")       # unhashable model name
@example(doc="loss: {name: {a: 1}}\n")         # unhashable loss name
@example(doc="1: {}\n")                        # non-string section name
@example(doc="train: {1: 2}\n")                # non-string key
@example(doc="eval: {ks: [10, true]}\n")
@example(doc="train: !!python/object/apply:os.system ['true']\n")
@example(doc="a: &x [*x]\n")                   # recursive alias
def test_config_file_gives_config_or_config_error(tmp_path_factory, doc):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(doc, encoding="utf-8")
    _config_or_error(str(path))


@FAST
@given(sets=st.lists(st.one_of(
    st.tuples(st.sampled_from(KEYS), st.one_of(YAML_VALUES.map(lambda v: json.dumps(v, default=str)),
                                               st.text(alphabet=string.printable, max_size=12)))
    .map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.text(max_size=20)), min_size=1, max_size=3))
@example(sets=["model.name=[1]"])
@example(sets=["loss.name={a: 1}"])
@example(sets=["train.lr=.nan"])
@example(sets=["train.epochs=1e400"])
@example(sets=["model.name.x=1"])
@example(sets=["=1"])
def test_set_overrides_give_config_or_config_error(sets):
    _config_or_error(None, sets)
