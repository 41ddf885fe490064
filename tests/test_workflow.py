"""The experiment workflow around fit: curves.png, next steps, the popularity verdict, dry runs,
`seqrec config show/keys` and the key reference in docs/cli.md, progress bars on terminals only."""

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
import yaml
from conftest import FAST_ARGS as FAST

from seqrec.cli import main
from seqrec.config import Config, load_config
from seqrec.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]



@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A tiny `seqrec fit` run, the epochs curves.png was drawn with, and fit's output."""
    import seqrec.training.curves as curves

    drawn, real = [], curves.draw_curves

    def spy(path, history, pop=None, title=None):
        drawn.append((len(history), dict(pop or {})))
        real(path, history, pop, title)

    run = tmp_path_factory.mktemp("wf") / "run"
    mp = pytest.MonkeyPatch()
    mp.setattr(curves, "draw_curves", spy)
    try:
        import contextlib
        import io

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            assert main(["fit", *FAST, "--out", str(run)]) == 0
    finally:
        mp.undo()
    return run, drawn, out.getvalue() + err.getvalue()


def test_curves_png_is_redrawn_every_epoch(fitted):
    run, drawn, _ = fitted
    assert [n for n, _ in drawn] == [1, 2]
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(run.glob(".curves.png.*"))  # the atomic write left no temp file


def test_popularity_line_is_popularity_on_the_validation_users(fitted):
    from seqrec.api import SeqRec

    run, drawn, _ = fitted
    pop = SeqRec.from_config({**RunDir(run).read_config(), "model": {"name": "pop"}})
    pop.fit(SeqRec.load(run).data_, log=lambda s: None)
    valid = pop.evaluate(split="valid", metrics_only=True)
    assert drawn[-1][1]["ndcg@10"] == pytest.approx(valid["ndcg@10"])
    assert drawn[-1][1]["hr@10"] == pytest.approx(valid["hr@10"])


def test_fit_names_the_next_commands(fitted):
    run, _, text = fitted
    for verb in ("evaluate", "recommend", "compare", "config show"):
        assert f"seqrec {verb} {run}" in text


def _flagged(run: Path, text: str) -> None:
    mine = json.loads((run / "results.json").read_text())["test"]["ndcg@10"]
    pop = json.loads((run / "baseline_pop.json").read_text())["test"]["ndcg@10"]
    assert ("below the popularity baseline" in text) == (mine < pop)


def test_below_popularity_is_flagged_exactly_when_it_is(fitted, tmp_path, capsys):
    run, _, text = fitted
    _flagged(run, text)
    weak = tmp_path / "weak"  # one epoch at a tiny learning rate: an untrained model
    assert main(["fit", *FAST, "--set", "train.epochs=1", "--set", "train.lr=1e-7", "--out", str(weak)]) == 0
    out = capsys.readouterr()
    _flagged(weak, out.out + out.err)
    assert "below the popularity baseline" in out.err


def test_dry_run_validates_plans_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *FAST, "--dry-run"]) == 0
    assert main(["fit", *FAST, "--dry-run", "--out", str(tmp_path / "d")]) == 0
    text = capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []  # no runs/ directory, no --out directory
    assert "memory: one training step" in text and "nothing trained or written" in text
    assert yaml.safe_load(text.split("\n\n")[0])["train"]["epochs"] == 2  # the resolved config comes first
    assert main(["fit", "--dry-run", "--set", "train.lr=-1"]) == 2  # validation still refuses


def test_config_show_round_trips(fitted, tmp_path, capsys):
    run, _, _ = fitted
    assert main(["config", "show", str(run)]) == 0
    shown = tmp_path / "shown.yaml"
    shown.write_text(capsys.readouterr().out)
    assert load_config(shown).to_dict() == Config.from_tree(RunDir(run).read_config()).to_dict()
    assert main(["config", "show", "default", "--set", "train.lr=0.01"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == load_config("default", {"train.lr": 0.01}).to_dict()
    assert main(["config", "show", "defualt"]) == 2
    assert "did you mean 'default'" in capsys.readouterr().err


def test_fit_help_lists_packaged_configs_and_the_key_reference(capsys):
    from seqrec.config import packaged_configs

    assert main(["fit", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in packaged_configs())
    assert "docs/cli.md" in text and "--dry-run" in text


def test_key_reference_in_docs_is_current():
    from seqrec.cli.config import END, START, key_reference

    doc, table = (ROOT / "docs" / "cli.md").read_text(), key_reference()
    assert START in doc and END in doc
    assert doc.split(START)[1].split(END)[0].strip() == table.strip(), (
        "docs/cli.md is stale: python -c \"from seqrec.cli.config import update_doc; update_doc()\"")
    from seqrec.config import FIXED

    for sec, cls in FIXED.items():  # every typed key is in the table
        assert all(f"`{sec}.{name}`" in table for name in cls.model_fields)


# ---------------------------------------------------------------- progress bars
SCRIPT = """
import sys
from seqrec.api import SeqRec
from seqrec.data import load_dataset
load_dataset("synthetic", **{"synthetic": {"n_users": 120, "n_items": 40, "n_clusters": 4, "mean_len": 12.0,
                                           "max_len": 30}})
SeqRec.load(sys.argv[1]).evaluate(split="valid")
"""


def _terminal_stderr(run: Path) -> str:
    """What SCRIPT draws on stderr when stderr is a terminal (a pty with a size)."""
    env = {**os.environ, "SEQREC_PROGRESS_DELAY": "0", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "SEQREC_QUIET": "0"}
    cmd = [sys.executable, "-c", SCRIPT, str(run)]
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal has a size
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait() == 0
    return b"".join(chunks).decode(errors="replace")


def test_progress_bars_on_a_terminal(fitted):
    run, _, _ = fitted
    tty = _terminal_stderr(run)
    assert "data synthetic" in tty and "encoding users" in tty and "top-k search" in tty


def test_no_progress_bars_off_a_terminal(fitted, capfd, monkeypatch):
    run, _, _ = fitted
    monkeypatch.setenv("SEQREC_PROGRESS_DELAY", "0")
    from seqrec.api import SeqRec
    from seqrec.data import load_dataset

    capfd.readouterr()
    load_dataset("synthetic", synthetic={"n_users": 120, "n_items": 40, "n_clusters": 4, "mean_len": 12.0,
                                         "max_len": 30})
    SeqRec.load(run).evaluate(split="valid")
    err = capfd.readouterr().err  # stderr is a pipe/file under pytest
    assert "encoding users" not in err and "data synthetic" not in err and "top-k" not in err


def test_quiet_switch(monkeypatch):
    from seqrec import progress

    class Tty:
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Tty())
    monkeypatch.delenv("SEQREC_QUIET", raising=False)
    assert progress.enabled()
    progress.set_quiet(True)
    try:
        assert not progress.enabled()
    finally:
        progress.set_quiet(False)
    monkeypatch.setenv("SEQREC_QUIET", "1")
    assert not progress.enabled()
