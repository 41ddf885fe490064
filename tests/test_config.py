"""Config tree: defaults, YAML round-trip, overrides, errors with did-you-mean hints."""

import re

import pytest
import yaml

from seqrec.config import Config, load_config, packaged_configs, parse_override
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
    assert "n_blocks" not in cfg.model.params


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
        Config.from_tree({"optim": {}})


@pytest.mark.parametrize("override, message", [
    ("train.device=gpu", "did you mean 'cuda'"),
    ("train.device=cdua", "did you mean 'cuda'"),
    ("train.devise=cpu", "did you mean 'device'"),
    ("eval.retrieval=faiss-ivff", "did you mean 'faiss-ivf'"),
    ("train.nan_policy=skp", "did you mean 'skip'"),
    ("loss.name=sce_union", "did you mean 'sce'"),
    ("train.batch_size=true", "train.batch_size: input should be a valid integer"),
    ("train.lr=.inf", "train.lr: input should be a finite number"),
    ("eval.retrieval_params={nprobe: 3}", "eval.retrieval_params need a named backend"),
    ("model.dropout=2", "model.dropout must be a number in"),
])
def test_every_key_is_typed_with_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as e:
        load_config(None, [override])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("override, new", [
    ("train.max_time=60", "train.max_time_s"),
    ("eval.retrieval_params={block_mb: 8}", "eval.retrieval_params.memory_budget_mb"),
    ("eval.retrieval_params={chunk: 8}", "eval.retrieval_params.chunk_size"),
])
def test_renamed_keys_name_the_new_key(override, new):
    with pytest.raises(ConfigError, match=f"renamed to {re.escape(new)}$"):
        load_config(None, ["eval.retrieval=torch", override])  # backend parameters need a named backend


def test_gru_n_layers_names_n_blocks_but_other_models_may_use_it():
    with pytest.raises(ConfigError, match="model.n_layers was renamed to model.n_blocks"):
        load_config(None, ["model.name=gru4rec", "model.n_layers=2"])


def test_one_override_grammar():
    assert parse_override("train.lr=1e-3") == ("train.lr", 0.001)
    assert parse_override("eval.ks=[1, 10]") == ("eval.ks", [1, 10])
    assert parse_override("train.grad_clip=") == ("train.grad_clip", None)
    assert parse_override("data.dataset=a=b") == ("data.dataset", "a=b")
    for bad in ("train.lr", "=3"):
        with pytest.raises(ConfigError, match="section.key=value"):
            parse_override(bad)


def test_typed_values_are_converted_once():
    cfg = load_config(None, ["train.lr=1", "loss.name=gbce", "loss.t=1"])
    assert isinstance(cfg.train.lr, float) and cfg.loss.t == 1.0 and isinstance(cfg.loss.t, float)


def test_yaml_round_trip_is_identical_for_every_packaged_config():
    for name in packaged_configs():
        text = yaml.safe_dump(load_config(name).to_dict(), sort_keys=False)
        again = yaml.safe_dump(Config.from_tree(yaml.safe_load(text)).to_dict(), sort_keys=False)
        assert again == text


def test_saved_runs_with_old_key_names_still_load(tmp_path):
    from seqrec.rundir import RunDir

    old = load_config(None, ["model.name=gru4rec", "eval.retrieval=torch"]).to_dict()  # as old runs wrote it
    old["train"]["max_time"] = old["train"].pop("max_time_s")
    old["model"]["n_layers"] = 2
    old["eval"]["retrieval_params"] = {"block_mb": 8}
    run = RunDir(tmp_path)
    run.config.write_text(yaml.safe_dump(old))
    cfg = Config.from_tree(run.read_config())  # a run directory is upgraded; typed keys are not
    assert cfg.train.max_time_s is None and cfg.model.n_blocks == 2
    assert cfg.eval.retrieval_params == {"memory_budget_mb": 8}
    with pytest.raises(ConfigError, match="renamed"):
        Config.from_tree(old)
