from omegaconf import OmegaConf

from ganno_lightning.config_keys import known_keys_at, unknown_key_error


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
