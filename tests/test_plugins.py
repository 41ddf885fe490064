"""Third-party losses, encoders and retrieval backends, usable by name from the CLI and the API:
through installed entry points (a ``*.dist-info`` on the path, as pip would leave it) and through
``--plugin MODULE`` / ``$SEQREC_PLUGINS``. Each case runs the real ``seqrec`` command in a subprocess."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from seqrec.errors import ConfigError
from seqrec.registry import LOSSES, MODELS, RETRIEVERS, Registry, load_plugins

PLUGIN = '''
import torch
from torch import nn

from seqrec.losses import Loss
from seqrec.models import Encoder
from seqrec.retrieval.exact import TorchRetriever


class HalfCE(Loss):
    """Full CE scaled by ``weight`` (enough to prove the name reaches the trainer)."""

    def __init__(self, weight: float = 0.5) -> None:
        self.weight = float(weight)

    def forward(self, hidden, targets, item_emb, ctx):
        return self.weight * nn.functional.cross_entropy(hidden @ item_emb.T, targets)


class MeanEncoder(Encoder):
    """Hidden state at t = mean of the item embeddings up to t (causal)."""

    def __init__(self, n_items: int, d: int = 8, max_len: int = 20) -> None:
        super().__init__(n_items, d)
        self.max_len = max_len
        self.emb = nn.Embedding(n_items + 1, d, padding_idx=0)

    def forward(self, items):
        x = self.emb(items)                                   # [B, L, d]
        n = (items > 0).float().cumsum(1).clamp(min=1)[..., None]
        return x.cumsum(1) / n

    def item_embeddings(self):
        return self.emb.weight[1:]


class SlowTorch(TorchRetriever):
    """The exact torch backend under another name."""
'''

REGISTER = '''
from seqrec.registry import LOSSES, MODELS, RETRIEVERS
from myplug import HalfCE, MeanEncoder, SlowTorch

LOSSES.register("half_ce", HalfCE)
MODELS.register("mymean", MeanEncoder)
RETRIEVERS.register("slow-torch", SlowTorch)
'''

TINY = ('data.options={"synthetic": {"n_users": 100, "n_items": 40, "n_clusters": 4, "mean_len": 10.0,'
        ' "max_len": 20}}')
FAST = ["--set", TINY, "--set", "train.epochs=2", "--set", "train.batch_size=32", "--set", "train.num_threads=1",
        "--no-baseline"]


def _seqrec(args, path, env=None):
    e = {k: v for k, v in os.environ.items() if k != "SEQREC_PLUGINS"}
    e.update(PYTHONPATH=os.pathsep.join([str(path), os.environ.get("PYTHONPATH", "")]), **(env or {}))
    return subprocess.run([sys.executable, "-m", "seqrec.cli", *args], capture_output=True, text=True, env=e)


@pytest.fixture
def site(tmp_path):
    """A folder holding the plug-in module and, as pip would install it, its entry points."""
    (tmp_path / "myplug.py").write_text(textwrap.dedent(PLUGIN))
    (tmp_path / "myplug_register.py").write_text(textwrap.dedent(REGISTER))
    info = tmp_path / "myplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: myplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[seqrec.losses]\nhalf_ce_ep = myplug:HalfCE\n\n[seqrec.models]\nmymean_ep = myplug:MeanEncoder\n\n"
        "[seqrec.retrievers]\nslow-torch-ep = myplug:SlowTorch\n")
    return tmp_path


def _train_and_evaluate(site, tmp_path, names, extra=()):
    loss, model, retrieval = names
    run = tmp_path / f"run-{model}"
    r = _seqrec(["fit", *extra, "--loss", loss, "--model", model, "--set", f"eval.retrieval={retrieval}",
                 "--set", "loss.weight=0.25", "--out", str(run), *FAST], site)
    assert r.returncode == 0, r.stderr
    cfg = (run / "config.yaml").read_text()
    assert f"name: {model}" in cfg and f"name: {loss}" in cfg and "weight: 0.25" in cfg
    r = _seqrec(["evaluate", *extra, str(run), "--json"], site)
    assert r.returncode == 0, r.stderr
    test = json.loads(r.stdout)["test"]
    assert test["ndcg@10"] == pytest.approx(json.loads((run / "results.json").read_text())["test"]["ndcg@10"])
    return run


def test_installed_entry_points_train_and_evaluate_by_name(site, tmp_path):
    _train_and_evaluate(site, tmp_path, ("half_ce_ep", "mymean_ep", "slow-torch-ep"))
    r = _seqrec(["fit", "--help"], site)
    assert "mymean_ep" in r.stdout and "half_ce_ep" in r.stdout  # help lists the installed names


def test_plugin_option_and_environment_variable(site, tmp_path):
    run = _train_and_evaluate(site, tmp_path, ("half_ce", "mymean", "slow-torch"),
                              extra=("--plugin", "myplug_register"))
    r = _seqrec(["evaluate", str(run), "--json"], site)  # without the plug-in the model's name is unknown
    assert r.returncode == 2 and "unknown model 'mymean'" in r.stderr
    r = _seqrec(["evaluate", str(run), "--json"], site, env={"SEQREC_PLUGINS": "myplug_register"})
    assert r.returncode == 0, r.stderr


def test_plugin_parameters_are_checked_like_built_ins(site, tmp_path):
    r = _seqrec(["fit", "--plugin", "myplug_register", "--loss", "half_ce", "--set", "loss.wieght=1",
                 "--out", str(tmp_path / "r"), *FAST], site)
    assert r.returncode == 2 and "did you mean 'weight'" in r.stderr and not (tmp_path / "r").exists()
    r = _seqrec(["fit", "--plugin", "no_such_module_xyz", "--out", str(tmp_path / "r")], site)
    assert r.returncode == 2 and "no_such_module_xyz" in r.stderr and "Traceback" not in r.stderr


def test_registry_api():
    reg = Registry("widget", "seqrec.test-widgets")

    @reg.register("round")
    class Round:
        def __init__(self, radius: int = 1, colour: str = "red") -> None:
            self.radius, self.colour = radius, colour

    assert reg.names() == ["round"] and Round.name == "round" and "round" in reg
    assert reg.build("round", radius=3).radius == 3
    with pytest.raises(ConfigError, match="did you mean 'round'"):
        reg.build("rund")
    with pytest.raises(ConfigError, match="did you mean 'radius'"):
        reg.build("round", radus=2)
    with pytest.raises(ConfigError, match=r"widget.radius: input should be a valid integer"):
        reg.build("round", radius="big")
    assert {"ce", "sce", "rece"} <= set(LOSSES.names()) and "sasrec" in MODELS and "faiss-ivf" in RETRIEVERS
    with pytest.raises(ConfigError, match="failed to import"):
        load_plugins(["no_such_module_xyz"])
