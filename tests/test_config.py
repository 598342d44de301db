import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest
from omegaconf import MISSING, DictConfig

from ganno_lightning.config import (
    WandbConfig,
    check_wandb,
    load_config,
    unknown_key_error,
)

REPO = Path(__file__).parents[1]
CONFIGS = REPO / "configs"


@dataclass
class Entry:
    family: str = MISSING
    tasks: int = 3


@dataclass
class Spec:
    low: float = MISSING
    high: float = MISSING


@dataclass
class Agent:
    path: str = "default"
    interval: Optional[int] = None


@dataclass
class Schema:
    steps: int = 500
    rate: float = 0.1
    sizes: list[int] = field(default_factory=lambda: [64, 64])
    suite: list[Entry] = field(default_factory=lambda: [Entry(family="mlp")])
    space: dict[str, Spec] = field(default_factory=dict)
    free: dict[str, Any] = field(default_factory=dict)
    agent: Agent = field(default_factory=Agent)


def test_message_names_path_source_close_match_known_keys_and_docs():
    err = unknown_key_error("suite[1].famly", ["family", "split"], source="a.yaml", see="configs/evaluate.yaml")
    assert isinstance(err, ValueError)
    assert str(err) == ("Unknown config key `suite[1].famly` in a.yaml (did you mean `family`?). "
                        "Known keys: family, split; see configs/evaluate.yaml.")


def test_message_without_a_close_match_or_known_keys():
    assert str(unknown_key_error("zzz", ["alpha"])) == "Unknown config key `zzz`. Known keys: alpha."
    assert str(unknown_key_error("a.b", [], see="x.yaml")) == "Unknown config key `a.b`. See x.yaml."


def test_file_then_overrides_merge_onto_the_schema(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("steps: 200\nsuite: [{family: a}, {family: b, tasks: 1}]\nfree: {x: {y: 1}}\n")
    config = load_config(Schema, path, ["rate=0.5", "suite[1].tasks=4", "sizes.0=32", "free.x.z=2"])
    assert isinstance(config, DictConfig)
    assert (config.steps, config.rate, list(config.sizes)) == (200, 0.5, [32, 64])
    assert [(e.family, e.tasks) for e in config.suite] == [("a", 3), ("b", 4)]
    assert config.free == {"x": {"y": 1, "z": 2}}
    assert load_config(Schema).steps == 500 and load_config(Schema, {"steps": 7}).steps == 7


def test_an_override_sets_a_whole_section_a_list_entry_or_a_new_dict_entry():
    config = load_config(Schema, None, ["agent={interval: 5}", "suite[0]={family: b}", "space.lr.low=0.1",
                                        "space.lr.high=1"])
    assert (config.agent.path, config.agent.interval) == ("default", 5)
    assert config.suite[0].family == "b" and (config.space.lr.low, config.space.lr.high) == (0.1, 1.0)
    config = load_config(Schema, {"space": {"lr": {"low": 0.1, "high": 1}}}, ["space.wd={low: 0, high: 0.1}",
                                                                               "space.lr={high: 2}"])
    assert (config.space.wd.low, config.space.wd.high) == (0.0, 0.1)  # a new entry, typed as the others
    assert (config.space.lr.low, config.space.lr.high) == (0.1, 2.0)  # an existing one merges


def test_a_shorthand_sets_its_sections_key_in_the_file_and_the_overrides():
    assert load_config(Schema, {"agent": "a.pt"}, shorthands={"agent": "path"}).agent.path == "a.pt"
    assert load_config(Schema, None, ["agent=b.pt"], shorthands={"agent": "path"}).agent.path == "b.pt"


@pytest.mark.parametrize(("data", "message"), [
    ({"stpes": 1}, "Unknown config key `stpes` in {src} (did you mean `steps`?). Known keys: steps, rate, sizes, "
                   "suite, space, free, agent; see x.yaml."),
    ({"suite": [{"family": "a"}, {"famly": "b"}]},
     "Unknown config key `suite[1].famly` in {src} (did you mean `family`?). Known keys: family, tasks; see x.yaml."),
    ({"space": {"lr": {"low": 1, "scale": 2}}}, "Unknown config key `space.lr.scale` in {src}. Known keys: low, high; "
                                                "see x.yaml."),
    ({"suite": [{"family": "a"}, {"tasks": "many"}]}, "`suite[1].tasks` in {src} must be an int, got 'many'."),
    ({"steps": "abc"}, "`steps` in {src} must be an int, got 'abc'."),
    ({"sizes": 3}, "`sizes` in {src} must be a list, got 3."),
    ({"agent": 3}, "`agent` in {src} must be a section of keys (path, interval), got 3."),
])
def test_every_error_in_a_file_names_the_key_and_the_file(tmp_path, data, message):
    import yaml

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError) as err:
        load_config(Schema, path, see="x.yaml")
    assert str(err.value) == message.format(src=path)
    with pytest.raises(ValueError) as err:
        load_config(Schema, data, see="x.yaml")
    assert str(err.value) == message.format(src="the config")


@pytest.mark.parametrize(("override", "message"), [
    ("stpes=1", "Unknown config key `stpes` in the overrides (did you mean `steps`?). Known keys: steps, rate, sizes, "
                "suite, space, free, agent; see x.yaml."),
    ("suite[0].tsks=2", "Unknown config key `suite[0].tsks` in the overrides (did you mean `tasks`?). Known keys: "
                        "family, tasks; see x.yaml."),
    ("space.lr.lw=2", "Unknown config key `space.lr.lw` in the overrides (did you mean `low`?). Known keys: low, high; "
                      "see x.yaml."),
    ("steps=abc", "`steps` in the overrides must be an int, got 'abc'."),
    ("rate=fast", "`rate` in the overrides must be a float, got 'fast'."),
    ("sizes=3", "`sizes` in the overrides must be a list, got 3."),
    ("steps", "Override 'steps' must be key=value with a key before the '=', e.g. steps=500."),
    ("=3", "Override '=3' must be key=value with a key before the '=', e.g. steps=500."),
    ("sizes", "Override 'sizes' must be key=value with a key before the '=', e.g. sizes=[64, 64]."),
    ("sizes[2]=8", "Override 'sizes[2]=8': `sizes` has 2 entries, so it has no index 2. Set the whole list instead, "
                   "e.g. sizes=[...]."),
    ("suite[3].family=c", "Override 'suite[3].family=c': `suite` has 1 entry, so it has no index 3. Set the whole "
                          "list instead, e.g. suite=[...]."),
    # omegaconf would make a key '0' of a free-form section, or fail with a raw TypeError
    ("free.sizes[0]=3", "Override 'free.sizes[0]=3': `free.sizes` is not set, so it has no index 0. Set the whole "
                        "value instead, e.g. free.sizes=[...]."),
    ("steps[0]=3", "Override 'steps[0]=3': `steps` is not a list, so it has no index 0. Set the whole value "
                   "instead, e.g. steps=[...]."),
])
def test_every_error_in_an_override_has_one_wording(override, message):
    with pytest.raises(ValueError) as err:
        load_config(Schema, None, ["steps=1", override], see="x.yaml")
    assert str(err.value) == message


def test_an_override_that_omegaconf_cannot_parse_names_itself():
    with pytest.raises(ValueError, match=r"^Override 'sizes\.x=3' cannot be applied: "):
        load_config(Schema, None, ["sizes.x=3"], see="x.yaml")


def test_an_override_whose_value_is_not_yaml_says_to_quote_it():
    with pytest.raises(ValueError, match=r"^Override 'sizes=\[\*a\]': its value is not valid YAML .*quote strings"):
        load_config(Schema, None, ["sizes=[*a]"], see="x.yaml")


def test_an_index_into_the_free_form_env_section_of_meta_training_is_one_line(capsys):
    from ganno_lightning.agents.train import main as train_main

    with pytest.raises(SystemExit) as exit_:
        train_main([str(CONFIGS / "ganno_smoke.yaml"), "env.scale_bounds[0]=0.1"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == ("ganno-train: error: Override 'env.scale_bounds[0]=0.1': `env.scale_bounds` is "
                                       "not set, so it has no index 0. Set the whole value instead, e.g. "
                                       "env.scale_bounds=[...].\n")


def test_a_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ValueError, match=r"Config file not found: '.*nowhere.yaml'"):
        load_config(Schema, tmp_path / "nowhere.yaml")


def test_wandb_sections_keep_each_tools_defaults_and_check_the_mode():
    from omegaconf import OmegaConf

    from ganno_lightning.agents.evaluation import EvaluateConfig
    from ganno_lightning.nos.search import SearchConfig
    from ganno_lightning.pbt.runner import PopulationConfig

    sections = {name: OmegaConf.structured(schema).wandb for name, schema in
                [("evaluate", EvaluateConfig), ("nos", SearchConfig), ("pbt", PopulationConfig)]}
    assert {name: (s.enabled, s.project, s.mode, s.name) for name, s in sections.items()} == {
        "evaluate": (False, "ganno-evaluate", "offline", None),
        "nos": (True, "ganno-nos", "offline", None),
        "pbt": (False, "ganno-pbt", "offline", None)}
    check_wandb(OmegaConf.structured(WandbConfig(mode="online")))
    with pytest.raises(ValueError, match=r"`wandb.mode` must be 'online', 'offline' or 'disabled', got 'onlin'"):
        check_wandb(OmegaConf.structured(WandbConfig(mode="onlin")))


# -- the command line of every tool ---------------------------------------------------------------

def _entry_points():
    from ganno_lightning.agents.evaluation import main as evaluate_main
    from ganno_lightning.agents.train import main as train_main
    from ganno_lightning.nos.search import main as nos_main
    from ganno_lightning.pbt.ray_tune import main as ray_main
    from ganno_lightning.pbt.runner import main as pbt_main

    # (main, its prog, a config, a list of it with fewer than 4 entries, a setting its validation rejects)
    return {"train": (train_main, "ganno-train", "ganno_smoke.yaml", "algo.hidden_sizes", "run.workers=0"),
            "evaluate": (evaluate_main, "ganno-evaluate", "evaluate_smoke.yaml", "seeds", "workers=0"),
            "nos": (nos_main, "ganno-nos-search", "nos_search_smoke.yaml", "space.binary",
                    "rounds=0"),
            "pbt": (pbt_main, "ganno-pbt", "pbt_smoke.yaml", "perturb_factors",
                    "population_size=1"),
            "ray": (ray_main, "ganno-pbt-ray", "pbt_smoke.yaml", "perturb_factors",
                    "population_size=1")}


ENTRY_POINTS = ["train", "evaluate", "nos", "pbt", "ray"]


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
@pytest.mark.parametrize(("override", "message"), [
    ("zzzz=1", r"Unknown config key `zzzz` in the overrides\. Known keys: .*; see configs/\w+\.yaml\."),
    ("zzzz", r"Override 'zzzz' must be key=value with a key before the '=', e\.g\. [\w.]+=\S+\."),
    ("{list}[3]=1", r"Override '{list}\[3\]=1': `{list}` has \d entr(y|ies), so it has no index 3\. Set the whole "
                    r"list instead, e\.g\. {list}=\[\.\.\.\]\."),
])
def test_every_entry_point_rejects_a_bad_override_with_one_line_and_status_2(entry_point, override, message, capsys,
                                                                             tmp_path):
    main, prog, config, a_list, _ = _entry_points()[entry_point]
    with pytest.raises(SystemExit) as exit_:
        main([str(CONFIGS / config), override.format(list=a_list)])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert re.fullmatch(rf"{re.escape(prog)}: error: {message.format(list=re.escape(a_list))}\n", captured.err), \
        captured.err


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_every_entry_point_rejects_an_invalid_setting_and_a_missing_file_with_one_line(entry_point, capsys, tmp_path):
    main, prog, config, _, invalid = _entry_points()[entry_point]
    for argv in ([str(CONFIGS / config), invalid], [str(tmp_path / "nowhere.yaml")], []):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"{prog}: error: ") and err.count("\n") == 1, err


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_every_entry_point_prints_its_help_and_config_keys(entry_point, capsys):
    main, prog, *_ = _entry_points()[entry_point]
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {prog} ") and "Config keys and defaults" in out


def test_a_bad_key_from_a_subprocess_is_one_line_without_a_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((CONFIGS / "ganno_smoke.yaml").read_text().replace("algo:", "algo:\n  gama: 0.9", 1))
    result = subprocess.run([sys.executable, "-m", "ganno_lightning.agents.train", str(bad)], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr == (f"ganno-train: error: Unknown config key `algo.gama` in {bad} (did you mean "
                             "`gamma`?). Known keys: algorithm, hidden_sizes, recurrent_size, critic_hidden_sizes, "
                             "activation, identity_init, policy_head, layer_offset_factor, lr, gamma, lmbda, clip_epsilon, entropy_coeff, critic_coeff, epochs, "
                             "minibatch_size, max_grad_norm, imitation_frames, ppo_imitation_coef, critic_warmup_frames, anchor_coef, hold_short_runs, expert_peak_factor, expert_schedule; "
                             "see configs/ganno_default.yaml.\n")


def test_the_pbt_list_index_override_sets_one_factor():
    from ganno_lightning.pbt.runner import load_config as load_population

    config = load_population(CONFIGS / "pbt_smoke.yaml", ["perturb_factors[0]=0.5"])
    assert list(config.perturb_factors) == [0.5, 1.2]
