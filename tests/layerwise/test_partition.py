import pytest
import torch
from torch import nn

from ganno_lightning import LayerPartition


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.norm = nn.LayerNorm(4)
        self.rnn = nn.GRU(4, 4)
        self.conv = nn.Conv1d(4, 4, 3)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight  # tied: belongs to `embed`, registered first
        self.scale = nn.Parameter(torch.ones(1))  # owned by the root module


def test_default_is_one_agent_per_owning_module_in_registration_order():
    partition = LayerPartition.from_module(Tied())
    assert partition.names == ("(root)", "embed", "norm", "rnn", "conv")
    assert [layer.kind for layer in partition] == ["other", "embedding", "norm", "recurrent", "conv"]
    assert partition.layers[1].param_names == ("embed.weight",)


def test_tied_parameter_belongs_to_exactly_one_agent():
    model = Tied()
    partition = LayerPartition.from_module(model)
    owners = [layer.name for layer in partition if any(p is model.head.weight for p in layer.params)]
    assert owners == ["embed"]
    assert sum(layer.numel for layer in partition) == sum(p.numel() for p in model.parameters())


def test_frozen_parameters_are_not_controlled():
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    model[0].weight.requires_grad_(False)
    partition = LayerPartition.from_module(model)
    assert partition.layers[0].param_names == ("0.bias",)
    model[0].bias.requires_grad_(False)
    assert LayerPartition.from_module(model).names == ("1",)


def test_only_parameters_given_are_controlled():
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    assert LayerPartition.from_module(model, params=model[1].parameters()).names == ("1",)


def test_nothing_trainable_is_an_error():
    model = nn.Sequential(nn.Linear(2, 3))
    model.requires_grad_(False)
    with pytest.raises(ValueError, match=r"`model` \(Sequential\) has no trainable parameter"):
        LayerPartition.from_module(model)
    with pytest.raises(ValueError, match="no trainable parameter"):
        LayerPartition.from_module(nn.ReLU())


def test_patterns_group_modules():
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 3), nn.Linear(3, 1))
    partition = LayerPartition.from_module(model, groups=["[01]"])
    assert partition.names == ("[01]", "2")
    assert partition.layers[0].module_names == ("0", "1")
    assert len(partition.layers[0].params) == 4


def test_pattern_matching_nothing_is_an_error_listing_module_names():
    with pytest.raises(ValueError, match=r"match no module.*\['0', '1'\]"):
        LayerPartition.from_module(nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1)), groups=["encoder.*"])


def test_callable_groups():
    model = nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3), nn.Linear(3, 1))
    partition = LayerPartition.from_module(model, groups=lambda name, m: "norms" if isinstance(m, nn.LayerNorm) else None)
    assert partition.names == ("0", "norms", "2")
    with pytest.raises(TypeError, match="must return a non-empty str or None"):
        LayerPartition.from_module(model, groups=lambda name, m: 3)


@pytest.mark.parametrize("groups", [[], "", 5])
def test_bad_groups_spec(groups):
    with pytest.raises((ValueError, TypeError), match="`groups`"):
        LayerPartition.from_module(nn.Linear(2, 2), groups=groups)
