"""Config tree: defaults, YAML round-trip, overrides, errors with did-you-mean hints."""

import pytest
import yaml

from seqrec.config import Config, load_config, packaged_configs
from seqrec.errors import ConfigError


def test_default_and_packaged_configs_load():
    assert {"default", "sasrec-ml-1m-ce", "sasrec-beauty-ce", "bert4rec-ml-1m"} <= set(packaged_configs())
    for name in packaged_configs():
        cfg = load_config(name)
        assert cfg.model.name in ("sasrec", "bert4rec")
    assert load_config(None).data.dataset == "synthetic"


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config("sasrec-ml-1m-ce", ["train.lr=0.01", "loss.name=ce"])
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg.to_dict()))
    assert load_config(str(p)).to_dict() == cfg.to_dict()


def test_overrides_types_and_nesting():
    cfg = load_config(None, ["train.lr=3e-4", "train.betas=[0.9, 0.99]", "model.dropout=0.5", "eval.filter_seen=false"])
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.train.betas == [0.9, 0.99]
    assert cfg.model.dropout == 0.5
    assert cfg.eval.filter_seen is False


def test_switching_model_drops_old_params():
    cfg = load_config(None, ["model.name=gru4rec"])
    assert "n_blocks" not in cfg.model


@pytest.mark.parametrize("override, hint", [
    ("train.lrr=1", "did you mean 'lr'"),
    ("trian.lr=1", "did you mean 'train'"),
    ("model.dropot=0.1", "did you mean 'dropout'"),
    ("model.name=sasrek", "did you mean 'sasrec'"),
])
def test_unknown_keys_hint(override, hint):
    with pytest.raises(ConfigError, match=hint):
        load_config(None, [override])


@pytest.mark.parametrize("override", ["train.lr=-1", "train.batch_size=0", "train.optimizer=sgd",
                                      "eval.ks=[5]", "train.autocast=int8", "loss.name=nope", "train"])
def test_bad_values_refused(override):
    with pytest.raises(ConfigError):
        load_config(None, [override])


def test_unknown_config_name_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="packaged"):
        load_config("no-such-config")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(str(bad))
    notmap = tmp_path / "list.yaml"
    notmap.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(str(notmap))


def test_yaml_is_never_executed(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("train: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError):
        load_config(str(evil))


def test_config_rejects_unknown_section():
    with pytest.raises(ConfigError, match="unknown config section"):
        Config({"optim": {}})
