import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ganno_lightning.config import apply_overrides, check_overrides, known_keys_at, unknown_key_error


def test_message_names_path_source_close_match_known_keys_and_docs():
    err = unknown_key_error("suite[1].famly", ["family", "split"], source="a.yaml", see="configs/evaluate.yaml")
    assert str(err) == ("Unknown config key `suite[1].famly` in a.yaml (did you mean `family`?). "
                        "Known keys: family, split; see configs/evaluate.yaml.")


def test_message_without_a_close_match_or_known_keys():
    assert str(unknown_key_error("zzz", ["alpha"])) == "Unknown config key `zzz`. Known keys: alpha."
    assert str(unknown_key_error("a.b", [], see="x.yaml")) == "Unknown config key `a.b`. See x.yaml."


def test_known_keys_at_a_missing_parent_is_empty():
    schema = OmegaConf.create({"run": {"seed": 0}})
    assert known_keys_at(schema, "sed") == ["run"]
    assert known_keys_at(schema, "algo.lr") == []


@pytest.mark.parametrize("item", ["lr", "=3", " =3", None])
def test_an_override_without_a_key_and_value_is_rejected_with_an_example(item):
    with pytest.raises(ValueError, match=rf"Override {re.escape(repr(item))} must be key=value.*e.g. steps=400"):
        check_overrides(["steps=1", item], example="steps=400")


def test_well_formed_overrides_pass_through_unchanged():
    assert check_overrides(("a.b=1", "c=", "d=x=y"), example="a=1") == ["a.b=1", "c=", "d=x=y"]


def _loaders():
    from agents.evaluation import load_config as evaluate_config
    from agents.train import parse_config
    from ganno_lightning.nos.search import load_config as nos_config
    from ganno_lightning.pbt.runner import load_config as pbt_config

    configs = Path(__file__).parents[1] / "configs"
    return {"train": (parse_config, configs / "ganno_smoke.yaml", "run.seed"),
            "evaluate": (evaluate_config, configs / "evaluate_smoke.yaml", "steps"),
            "nos": (nos_config, configs / "nos_search_smoke.yaml", "rounds"),
            "pbt": (pbt_config, configs / "pbt_smoke.yaml", "population_size")}


@pytest.mark.parametrize("entry_point", ["train", "evaluate", "nos", "pbt"])
def test_every_entry_point_rejects_an_override_without_a_value(entry_point):
    load, config, key = _loaders()[entry_point]
    with pytest.raises(ValueError, match=rf"Override '{key}' must be key=value"):
        load(config, [key])


def test_overrides_set_list_entries_in_place_and_name_a_missing_index():
    config = OmegaConf.create({"space": {"unary": ["neg", "exp"]}, "members": [{"name": "a"}]})
    apply_overrides(config, ["space.unary[1]=sign", "members[0].name=b", "space.unary.0=log"])
    assert config.space.unary == ["log", "sign"] and config.members[0].name == "b"
    with pytest.raises(ValueError, match=r"Override 'members\[3\].name=c': `members` has 1 entry, so it has no "
                                         r"index 3.*members=\[...\]"):
        apply_overrides(config, ["members[3].name=c"])
