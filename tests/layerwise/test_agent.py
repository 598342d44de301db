import hashlib
import io
import math
import zipfile

import pytest
import torch
from helpers import BENCHMARKS

from ganno_lightning import FEATURE_NAMES, AgentCheckpointError, GANNOAgent
from ganno_lightning.layerwise import agent as agent_module
from ganno_lightning.layerwise.agent import DEFAULT_AGENT_PATH, FORMAT_VERSION
from ganno_lightning.layerwise.rollback import SpikeRule
from ganno_lightning.layerwise.features import FEATURE_SETS


def test_round_trip_preserves_everything(tmp_path):
    agent = GANNOAgent.create(hidden_sizes=(16,), interval=10, scale_bounds=(0.1, 10.0), seed=3)
    agent.normalizer.mean.fill_(0.5)
    agent.training_config = {"lr": 3e-4, "tasks": ["mlp", "cnn"]}
    agent.evaluation = {"beats_constant": 0.9}
    path = agent.save(tmp_path / "agent.pt")
    loaded = GANNOAgent.load(path)
    obs = torch.randn(4, len(FEATURE_NAMES))
    torch.testing.assert_close(loaded.logits(obs), agent.logits(obs))
    assert loaded.interval == 10 and loaded.scale_bounds == (0.1, 10.0)
    assert loaded.action_multipliers == agent.action_multipliers
    assert loaded.training_config == agent.training_config and loaded.evaluation == agent.evaluation
    assert list(tmp_path.glob("*agent.pt*")) == [path]  # atomic save leaves no temporary file


def test_checkpoint_loads_with_weights_only(tmp_path):
    path = GANNOAgent.create(seed=0).save(tmp_path / "agent.pt")
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["format_version"] == 1  # feed-forward files stay readable by older releases
    assert checkpoint["feature_names"] == list(FEATURE_NAMES)


def test_small_file(tmp_path):
    path = GANNOAgent.create(seed=0).save(tmp_path / "agent.pt")
    assert path.stat().st_size < 100_000


def _save_modified(tmp_path, **changes):
    checkpoint = GANNOAgent.create(seed=0).to_checkpoint()
    checkpoint.update(changes)
    path = tmp_path / "agent.pt"
    torch.save(checkpoint, path)
    return path


def test_feature_mismatch_names_the_difference(tmp_path):
    names = list(FEATURE_NAMES)
    names[names.index("grad_consistency")] = "grad_cosine"
    with pytest.raises(AgentCheckpointError, match=r"features this version does not compute \['grad_cosine'\]"):
        GANNOAgent.load(_save_modified(tmp_path, feature_names=names))
    names = list(FEATURE_NAMES)
    names[0] = names[1]
    with pytest.raises(AgentCheckpointError, match=r"repeated features \['log_lr'\]"):
        GANNOAgent.load(_save_modified(tmp_path, feature_names=names))
    with pytest.raises(AgentCheckpointError, match="Feature count mismatch: actor expects 23, normaliser has 23, "
                                                   "the agent observes 22"):
        GANNOAgent.load(_save_modified(tmp_path, feature_names=list(FEATURE_NAMES)[:-1]))


def test_an_agent_of_another_feature_set_round_trips_and_the_callback_feeds_it_its_features(tmp_path):
    agent = GANNOAgent.create(seed=0, feature_names="lr_probe")
    probe_names = FEATURE_SETS["lr_probe"]
    assert agent.feature_names == probe_names and agent.actor.config["num_features"] == len(probe_names)
    loaded = GANNOAgent.load(agent.save(tmp_path / "agent.pt"))
    assert loaded.feature_names == probe_names
    observation = torch.randn(3, len(probe_names))
    assert torch.equal(loaded.decide(observation, exploration="mode").multipliers,
                       agent.decide(observation, exploration="mode").multipliers)
    sets = r"\['default', 'hypergradient', 'lr_probe', 'run_length', 'scale_free'\]"
    with pytest.raises(ValueError, match=rf"`feature_names` must be one of {sets}"):
        GANNOAgent.create(feature_names="scale_invariant")


def test_action_set_mismatch_is_an_error(tmp_path):
    with pytest.raises(AgentCheckpointError, match="Action set mismatch: the actor outputs 7 actions but 3"):
        GANNOAgent.load(_save_modified(tmp_path, action_multipliers=[0.5, 1.0, 2.0]))
    with pytest.raises(AgentCheckpointError, match="positive finite"):
        GANNOAgent.load(_save_modified(tmp_path, action_multipliers=[0.5, -1.0, 2.0, 1, 1, 1, 1]))


def test_features_version_mismatch_is_an_error(tmp_path):
    with pytest.raises(AgentCheckpointError, match="features version 0"):
        GANNOAgent.load(_save_modified(tmp_path, features_version=0))


def test_newer_format_version_is_an_error(tmp_path):
    with pytest.raises(AgentCheckpointError, match=r"format version 99.*Upgrade ganno-lightning"):
        GANNOAgent.load(_save_modified(tmp_path, format_version=99))


def test_missing_keys_and_wrong_weights_are_errors(tmp_path):
    checkpoint = GANNOAgent.create(seed=0).to_checkpoint()
    del checkpoint["normalizer"]
    torch.save(checkpoint, tmp_path / "a.pt")
    with pytest.raises(AgentCheckpointError, match=r"missing keys \['normalizer'\]"):
        GANNOAgent.load(tmp_path / "a.pt")
    checkpoint = GANNOAgent.create(seed=0).to_checkpoint()
    checkpoint["actor"]["config"]["hidden_sizes"] = [7]
    torch.save(checkpoint, tmp_path / "b.pt")
    with pytest.raises(AgentCheckpointError, match="invalid actor"):
        GANNOAgent.load(tmp_path / "b.pt")


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(AgentCheckpointError, match="not found"):
        GANNOAgent.load(tmp_path / "none.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(AgentCheckpointError, match="expected a dict, got list"):
        GANNOAgent.load(tmp_path / "list.pt")


def _zip_without_torch_layout() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes/readme.txt", "hello")
    return buffer.getvalue()


def _torch_file(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


SHIPPED = DEFAULT_AGENT_PATH.read_bytes()
UNREADABLE_FILES = {
    "garbage": (bytes(range(256)) * 8, r"not a GANNO agent file: .*starts with b'\\x00\\x01\\x02\\x03', not a zip"),
    "empty": (b"", r"the file is empty \(0 bytes\)"),
    "cut in the zip header": (SHIPPED[:2], r"truncated: the file has 2 bytes, cut inside its zip header"),
    **{f"cut at byte {cut}": (SHIPPED[:cut], rf"truncated: the file has {cut} bytes and ends before its zip archive")
       for cut in (4, 100, 3000, len(SHIPPED) // 2, len(SHIPPED) - 22, len(SHIPPED) - 1)},
    "zip, not torch": (_zip_without_torch_layout(), r"not a GANNO agent file: a zip archive without the `data.pkl`"),
    "state_dict": (_torch_file(torch.nn.Linear(2, 2).state_dict()),
                   r"not a GANNO agent file: it holds a dict with keys \['weight', 'bias'\]"),
    "pickled module": (_torch_file(torch.nn.Linear(2, 2)),
                       r"not a GANNO agent file: it holds a pickled `torch.nn.modules.linear.Linear`"),
}


@pytest.mark.parametrize("case", UNREADABLE_FILES)
def test_an_unreadable_file_says_what_is_wrong_and_never_suggests_unsafe_loading(tmp_path, case):
    content, problem = UNREADABLE_FILES[case]
    path = tmp_path / "agent.pt"
    path.write_bytes(content)
    with pytest.raises(AgentCheckpointError, match=problem) as caught:
        GANNOAgent.load(path)
    message = str(caught.value)
    assert str(path) in message
    assert "ganno-train" in message and "bundled" in message  # how to fix it
    assert "weights_only" not in message and "file an issue" not in message.lower()
    assert "arbitrary code" not in message and "internal" not in message


def _largest_tensor_entry_middle(archive: bytes) -> int:
    """The offset of the middle byte of the largest tensor's data in a torch.save zip archive."""
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        entry = max((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: i.compress_size)
    # the local header: 30 fixed bytes, then the name and the extra field, whose lengths it stores
    name_length = int.from_bytes(archive[entry.header_offset + 26:entry.header_offset + 28], "little")
    extra_length = int.from_bytes(archive[entry.header_offset + 28:entry.header_offset + 30], "little")
    return entry.header_offset + 30 + name_length + extra_length + entry.compress_size // 2


def test_a_flipped_byte_inside_the_archive_is_corrupt(tmp_path):
    content = bytearray(SHIPPED)
    content[_largest_tensor_entry_middle(SHIPPED)] ^= 0xFF  # inside a tensor's bytes: only its checksum notices
    path = tmp_path / "agent.pt"
    path.write_bytes(bytes(content))
    with pytest.raises(AgentCheckpointError, match=r"corrupt: the archive's entry '[^']+/data/\d+' fails its checksum"):
        GANNOAgent.load(path)


def test_a_damaged_bundled_agent_says_to_reinstall(tmp_path, monkeypatch):
    damaged = tmp_path / "default_agent.pt"
    damaged.write_bytes(SHIPPED[:1000])
    monkeypatch.setattr(agent_module, "DEFAULT_AGENT_PATH", damaged)
    with pytest.raises(AgentCheckpointError, match=r"truncated.*bundled with ganno-lightning is damaged: reinstall"):
        GANNOAgent.default()


def test_act_masks_and_samples():
    agent = GANNOAgent.create(seed=0)
    obs = torch.randn(2, 5, len(FEATURE_NAMES))
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    logits = agent.logits(obs, mask)
    # padded agents do not change what the real ones see
    torch.testing.assert_close(logits[1, :2], agent.logits(obs[1:, :2])[0])
    assert agent.decide(obs, mask=mask).multipliers.shape == (2, 5)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    first = agent.decide(obs, mask=mask, exploration="random", generator=g1)
    assert torch.equal(first.actions, agent.decide(obs, mask=mask, exploration="random", generator=g2).actions)


def test_exploration_types_turn_the_action_distribution_into_multipliers():
    agent = GANNOAgent.create(seed=0)
    obs = torch.randn(6, len(FEATURE_NAMES))
    probs = torch.softmax(agent.logits(obs), -1)
    log_m = torch.tensor(agent.action_multipliers).log()
    mean = agent.decide(obs, exploration="mean")
    assert mean.actions is None
    torch.testing.assert_close(mean.multipliers.log().float(), probs @ log_m)  # the expected log-change
    mode = agent.decide(obs, exploration="mode")
    assert torch.equal(mode.actions, probs.argmax(-1))
    assert mode.multipliers.tolist() == [agent.action_multipliers[a] for a in mode.actions]  # exactly the env's
    assert mean.multipliers.min() >= min(agent.action_multipliers) and mean.multipliers.max() <= max(agent.action_multipliers)
    samples = torch.stack([agent.decide(obs, exploration="random", generator=torch.Generator().manual_seed(s)).actions
                           for s in range(400)])
    # a sample's average log-change converges to the mean's
    torch.testing.assert_close(log_m[samples].mean(0), mean.multipliers.log().float(), atol=0.12, rtol=0)
    with pytest.raises(ValueError, match=r"`exploration` must be one of \['mean', 'mode', 'random'\], got 'greedy'"):
        agent.decide(obs, exploration="greedy")


def test_recurrent_agent_carries_its_state_and_round_trips(tmp_path):
    agent = GANNOAgent.create(hidden_sizes=(16,), recurrent_size=8, seed=0)
    observation = torch.randn(4, len(FEATURE_NAMES))
    _, actions, state = agent.decide(observation, exploration="mode")
    assert actions.shape == (4,) and state.shape == (4, 8)
    later = agent.decide(observation, state).state
    fresh = agent.decide(observation).state
    assert not torch.equal(later, fresh)  # the same observation reads differently with a history
    path = agent.save(tmp_path / "agent.pt")
    assert torch.load(path, weights_only=True)["format_version"] == 2  # recurrent, without timing options
    loaded = GANNOAgent.load(path)
    assert loaded.recurrent
    torch.testing.assert_close(loaded.decide(observation, state).state, later)
    feed_forward = GANNOAgent.create(seed=0)
    assert not feed_forward.recurrent and feed_forward.decide(observation).state is None


def test_fingerprint_follows_the_weights_in_any_dtype(tmp_path):
    agent = GANNOAgent.create(seed=0)
    path = agent.save(tmp_path / "agent.pt")
    assert GANNOAgent.load(path).fingerprint() == agent.fingerprint()
    legacy = hashlib.sha256()  # float32 fingerprints are what the numpy-based first version computed
    for module in (agent.actor, agent.normalizer):
        for name, tensor in module.state_dict().items():
            legacy.update(name.encode())
            legacy.update(tensor.numpy().tobytes())
    assert agent.fingerprint() == legacy.hexdigest()[:16]
    half = GANNOAgent.create(seed=0)
    half.actor.to(torch.bfloat16)  # numpy has no bfloat16: the hash reads raw bytes
    assert half.fingerprint() != agent.fingerprint()
    with torch.no_grad():
        next(agent.actor.parameters()).view(-1)[0] += 1e-3
    assert agent.fingerprint() != GANNOAgent.load(path).fingerprint()


# -- #18 options: decision steps, LR prior, wide action set, identity init ------------------------
def test_timing_options_round_trip_in_a_format_3_file(tmp_path):
    agent = GANNOAgent.create(hidden_sizes=(8,), interval=10, action_multipliers="wide", seed=0,
                              decision_steps="front_loaded", prior="warmup_cosine")
    path = agent.save(tmp_path / "agent.pt")
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["format_version"] == 3  # older releases refuse it, as they must
    assert (checkpoint["decision_steps"], checkpoint["prior"]) == ([0, 2, 5], "warmup_cosine")
    loaded = GANNOAgent.load(path)
    assert (loaded.decision_steps, loaded.prior) == ((0, 2, 5), "warmup_cosine")
    assert len(loaded.action_multipliers) == loaded.actor.config["num_actions"] == 11
    assert loaded.action_multipliers[0] == 0.125 and loaded.action_multipliers[-1] == 8.0
    assert "decision_steps=[0, 2, 5]" in repr(loaded)


def test_a_prior_for_long_fits_round_trips_in_a_format_7_file(tmp_path):
    agent = GANNOAgent.create(hidden_sizes=(8,), seed=0, prior="cosine", prior_above=600)
    checkpoint = torch.load(agent.save(tmp_path / "agent.pt"), weights_only=True)
    # an older release would read the prior and apply it in every fit: it must refuse the file
    assert checkpoint["format_version"] == 7
    assert (checkpoint["prior"], checkpoint["prior_above"]) == ("cosine", 600)
    loaded = GANNOAgent.load(tmp_path / "agent.pt")
    assert (loaded.prior, loaded.prior_above) == ("cosine", 600) and "prior_above=600" in repr(loaded)
    everywhere = GANNOAgent.create(hidden_sizes=(8,), seed=0, prior="cosine").to_checkpoint()
    assert everywhere["format_version"] == 3 and "prior_above" not in everywhere  # as earlier releases wrote it
    unbounded = GANNOAgent.create(hidden_sizes=(8,), seed=0, prior_above=600).to_checkpoint()  # no prior to bound
    assert unbounded["format_version"] == 1 and "prior_above" not in unbounded


def test_a_spike_rule_round_trips_in_a_format_9_file_and_combined_agents_must_share_it(tmp_path):
    agent = GANNOAgent.create(hidden_sizes=(8,), seed=0, recover_on_spike={"spike_factor": 5.0})
    checkpoint = torch.load(agent.save(tmp_path / "agent.pt"), weights_only=True)
    # an older release would deploy it without the rollback it was chosen with: it must refuse the file
    assert checkpoint["format_version"] == 9 == FORMAT_VERSION
    assert checkpoint["recover_on_spike"] == {"spike_factor": 5.0, "spike_lr_cut": 0.5}
    loaded = GANNOAgent.load(tmp_path / "agent.pt")
    assert loaded.recover_on_spike == SpikeRule(spike_factor=5.0) and "spike_factor=5.0" in repr(loaded)
    assert "recover_on_spike" not in GANNOAgent.create(hidden_sizes=(8,), seed=0).to_checkpoint()
    with pytest.raises(ValueError, match=r"member 1 has recover_on_spike=None"):
        GANNOAgent.ensemble([agent, GANNOAgent.create(hidden_sizes=(8,), seed=1)])
    with pytest.raises(AgentCheckpointError, match=r"`spike_factor` must be a number > 1"):
        GANNOAgent.create(hidden_sizes=(8,), seed=0, recover_on_spike={"spike_factor": 1.0})


def test_a_wide_action_set_alone_keeps_the_old_format(tmp_path):
    checkpoint = torch.load(GANNOAgent.create(action_multipliers="wide", seed=0).save(tmp_path / "a.pt"),
                            weights_only=True)
    assert checkpoint["format_version"] == 1 and "decision_steps" not in checkpoint and "prior" not in checkpoint


# a real agent file written before the options existed (format version 2; an ensemble member of issue #18)
FILE_BEFORE_THE_OPTIONS = BENCHMARKS / "results" / "ensemble_members" / "member0_calibrated_expert_s0.pt"


def test_files_without_the_options_load_as_before(tmp_path):
    # a file that predates the options: every `interval` steps, no prior, its own 7 actions
    shipped = torch.load(FILE_BEFORE_THE_OPTIONS, weights_only=True)
    assert "decision_steps" not in shipped and "prior" not in shipped
    agent = GANNOAgent.load(FILE_BEFORE_THE_OPTIONS)
    assert (agent.decision_steps, agent.prior) == ((), "none")
    # ... and written again, it is the same dict of the same keys and values
    again = agent.to_checkpoint()
    assert list(again) == list(shipped)
    assert again["format_version"] == shipped["format_version"]
    for key in ("action_multipliers", "interval", "scale_bounds", "training_config", "evaluation"):
        assert again[key] == shipped[key], key


@pytest.mark.parametrize("changes, match", [
    ({"decision_steps": [4, 2]}, r"`decision_steps` must be 'none', 'front_loaded' or a list"),
    ({"prior": "linear"}, r"`prior` must be one of"),
    ({"prior_above": 2.5}, r"`prior_above` must be an int >= 0 .*got 2.5"),
])
def test_bad_options_in_a_file_are_named(tmp_path, changes, match):
    with pytest.raises(AgentCheckpointError, match=match):
        GANNOAgent.load(_save_modified(tmp_path, format_version=3, **changes))


@pytest.mark.parametrize("recurrent_size", [0, 8])
@pytest.mark.parametrize("actions", ["default", "wide"])
def test_an_identity_initialised_agent_keeps_every_lr(recurrent_size, actions):
    agent = GANNOAgent.create(hidden_sizes=(16,), recurrent_size=recurrent_size, action_multipliers=actions,
                              identity_prob=0.8, seed=1)
    observation = 5 * torch.randn(6, len(FEATURE_NAMES))
    for exploration in ("mean", "mode"):
        decision = agent.decide(observation, exploration=exploration)
        assert decision.multipliers.tolist() == [1.0] * 6, exploration
        decision = agent.decide(observation, decision.state, exploration=exploration)  # later decisions too
        assert decision.multipliers.tolist() == [1.0] * 6, exploration
    # ... and still explores: "random" keeps the LR 80% of the time, every other action equally likely
    probs = torch.softmax(agent.logits(observation), -1)
    keep = agent.action_multipliers.index(1.0)
    torch.testing.assert_close(probs[:, keep], torch.full((6,), 0.8))
    others = torch.cat([probs[:, :keep], probs[:, keep + 1:]], -1)
    torch.testing.assert_close(others, torch.full_like(others, 0.2 / (len(agent.action_multipliers) - 1)))


def test_identity_init_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"`identity_prob` must be a probability in \(0, 1\) \(e.g. 0.8\), got 1.0"):
        GANNOAgent.create(identity_prob=1.0)
    with pytest.raises(ValueError, match=r"`identity_prob` needs an action set with the multiplier 1"):
        GANNOAgent.create(action_multipliers=[0.5, 2.0], identity_prob=0.8)


def test_identity_init_leaves_the_random_init_of_the_hidden_layers_as_it_was():
    plain, identity = GANNOAgent.create(seed=4), GANNOAgent.create(seed=4, identity_prob=0.8)
    torch.testing.assert_close(plain.actor.mlp[0].weight, identity.actor.mlp[0].weight, rtol=0, atol=0)
    assert identity.actor.mlp[-1].weight.abs().sum() == 0


# -- #18 item 5: the factorised policy head ----------------------------------------------------------
def _factorised(recurrent_size=0, **kwargs):
    return GANNOAgent.create(hidden_sizes=(16,), recurrent_size=recurrent_size, policy_head="factorised", seed=2,
                             **kwargs)


def test_a_factorised_head_moves_the_network_as_one_and_its_layers_apart_within_the_bound():
    from ganno_lightning.layerwise.policy import FactorisedHead

    head = FactorisedHead(4, [0.5, 1.0, 2.0], layer_offset_factor=1.5)
    with torch.no_grad():
        head.network.weight.zero_()
        head.network.bias.fill_(math.log(2.0))  # the network as a whole: x2
        head.offset.weight.normal_(0, 10.0)  # layers far apart: the tanh bound holds them
    mask = torch.tensor([True] * 5 + [False] * 3)
    features = torch.randn(8, 4)
    with torch.no_grad():
        centres = head.centres(features, mask)[:5]
    assert centres.mean().item() == pytest.approx(math.log(2.0), abs=1e-6)  # offsets are mean-zero
    offsets = centres - math.log(2.0)
    assert offsets.abs().max() <= 2 * math.log(1.5) + 1e-6 and offsets.abs().max() > 0.1
    other = features.clone()
    other[5:] = 100.0  # padded agents never move the valid ones
    torch.testing.assert_close(head(other, mask)[:5], head(features, mask)[:5])


@pytest.mark.parametrize("recurrent_size", [0, 8])
def test_under_mean_exploration_a_factorised_agent_changes_every_lr_by_its_centre(recurrent_size):
    agent = _factorised(recurrent_size)
    head = agent.actor.head
    with torch.no_grad():
        head.log_width.fill_(math.log(0.05))
        head.network.weight.zero_()
        head.network.bias.fill_(math.log(1.3))  # between the set's levels 2^(1/4) and 2^(1/2)
        head.offset.weight.zero_()
    decision = agent.decide(torch.randn(5, len(FEATURE_NAMES)), exploration="mean")
    assert decision.multipliers.tolist() == pytest.approx([1.3] * 5, rel=0.02)


@pytest.mark.parametrize("recurrent_size", [0, 8])
def test_a_factorised_agent_starts_as_the_identity_and_round_trips_in_a_format_4_file(tmp_path, recurrent_size):
    agent = _factorised(recurrent_size, identity_prob=0.8, action_multipliers="wide")
    observation = 5 * torch.randn(6, len(FEATURE_NAMES))
    for exploration in ("mean", "mode"):
        assert agent.decide(observation, exploration=exploration).multipliers.tolist() == [1.0] * 6
    probs = torch.softmax(agent.logits(observation), -1)
    torch.testing.assert_close(probs[:, agent.action_multipliers.index(1.0)], torch.full((6,), 0.8))
    path = agent.save(tmp_path / "agent.pt")
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["format_version"] == 4  # a release without the head must refuse it
    loaded = GANNOAgent.load(path)
    assert loaded.fingerprint() == agent.fingerprint()
    torch.testing.assert_close(loaded.logits(observation), agent.logits(observation))
    # an actor built for other multipliers than the agent acts with is refused
    checkpoint["action_multipliers"] = [m * 1.1 for m in checkpoint["action_multipliers"]]
    torch.save(checkpoint, tmp_path / "bad.pt")
    with pytest.raises(AgentCheckpointError, match="the factorised actor was built for the multipliers"):
        GANNOAgent.load(tmp_path / "bad.pt")


def test_factorised_head_options_are_checked():
    with pytest.raises(ValueError, match=r"`policy_head` must be one of \['categorical', 'factorised'\], got 'pooled'"):
        GANNOAgent.create(policy_head="pooled")
    with pytest.raises(ValueError, match=r"`layer_offset_factor` must be a float > 1 .*got 1.0"):
        GANNOAgent.create(policy_head="factorised", layer_offset_factor=1.0)
    from ganno_lightning.layerwise.policy import init_identity

    agent = GANNOAgent.create(policy_head="factorised", action_multipliers=[0.5, 1.0, 2.0])
    with pytest.raises(ValueError, match="starts as the identity only around the multiplier 1; action 0 multiplies"):
        init_identity(agent.actor, 0, 0.8)


def test_the_trained_horizon_is_the_longest_run_of_meta_training():
    def agent(env):
        created = GANNOAgent.create(seed=0)
        created.training_config = {"env": env}
        return created

    assert agent({"horizon": 300}).trained_horizon == 300
    assert agent({"horizon": 300, "long_run_prob": 0.25, "long_horizon": 1200}).trained_horizon == 1200
    assert agent({"horizon": 300, "long_run_prob": 0.0, "long_horizon": 1200}).trained_horizon == 300  # off
    assert agent({}).trained_horizon is None and GANNOAgent.create(seed=0).trained_horizon is None
