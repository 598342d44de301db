import re

import pytest
from omegaconf import OmegaConf

from ganno_lightning.config_keys import check_overrides, known_keys_at, unknown_key_error


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
