"""The RNN controller that writes update rules, and its PPO trainer (TorchRL's ``ClipPPOLoss``).

Following Bello et al. (2017), a rule of depth 1 is ``b(u1(op1), u2(op2))`` and is emitted as five
tokens ``op1, op2, u1, u2, b``; depth ``d`` replaces each operand by a depth ``d-1`` subtree. An LSTM
reads the previous token and a softmax head per token kind (operand, unary, binary) picks the next.

A whole rule is one action, so the search is a contextual-free bandit: the log-probability of a rule
is the sum of its token log-probabilities, computed by teacher forcing on the stored tokens. PPO's
clipped objective then runs unchanged; the advantage is the reward minus an exponential moving
average baseline, as in the paper.

Example::

    import torch
    from ganno_lightning.nos.controller import ControllerPPO, RuleController, SearchSpace

    space = SearchSpace(operands=["g", "m_hat", "sign_g", "1"], unary=["id", "neg", "exp"], binary=["add", "mul"])
    ppo = ControllerPPO(RuleController(space, seed=0))
    actions, log_probs = ppo.controller.sample(8)
    rules = [ppo.controller.decode(a) for a in actions]       # rule texts for RuleOptimizer
    ppo.update(actions, log_probs, torch.rand(8))             # rewards from your training runs
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from tensordict import TensorDict
from tensordict.nn import ProbabilisticTensorDictModule, ProbabilisticTensorDictSequential, TensorDictModule
from torch import distributions as D
from torch import nn
from torchrl.objectives import ClipPPOLoss

from ganno_lightning.nos.dsl import BINARY_FUNCTIONS, UNARY_FUNCTIONS, RuleSyntaxError, parse_rule

__all__ = ["SearchSpace", "RuleController", "ControllerPPO", "SequenceCategorical", "Keys"]

_KINDS = ("operand", "unary", "binary")


class Keys:
    """Tensordict keys of the controller's PPO batch, declared once."""

    ACTION = "action"
    LOGITS = "logits"
    LOG_PROB = "sample_log_prob"
    ADVANTAGE = "advantage"


@dataclass
class SearchSpace:
    """What the controller may write.

    Args:
        operands: rule expressions used as leaves, e.g. ``"g"``, ``"m_hat"``, ``"mul(0.001, w)"``.
        unary: unary functions: a name without parameters (``"neg"``) or a template with ``{}`` for
            the argument (``"clip({}, 0.01)"``, ``"drop({}, 0.3)"``). ``"id"`` renders as its argument.
        binary: binary function names (``"add"``, ``"sub"``, ``"mul"``, ``"div"``, ``"pow"``, ``"keep"``).
        depth: nesting depth of the emitted tree (1 is the paper's ``b(u1(op1), u2(op2))``).

    Raises:
        ValueError: an empty list, an unknown name, a template that does not parse, or a bad depth.
    """

    operands: list = field(default_factory=lambda: ["g", "g2", "m_hat", "v_hat", "sign_g", "sign_m", "1", "2", "adam"])
    unary: list = field(default_factory=lambda: ["id", "neg", "exp", "log", "sqrt", "sign", "clip({}, 0.01)"])
    binary: list = field(default_factory=lambda: ["add", "sub", "mul", "div", "keep"])
    depth: int = 1

    def __post_init__(self) -> None:
        for name in ("operands", "unary", "binary"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, Sequence) or len(value) == 0:
                raise ValueError(
                    f"`{name}` must be a non-empty list, got {value!r}. The search space needs at least one "
                    f"choice per token kind, e.g. {name}={SearchSpace.__dataclass_fields__[name].default_factory()[:3]!r}."
                )
            setattr(self, name, [str(v) for v in value])
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or not 1 <= self.depth <= 3:
            raise ValueError(f"`depth` must be an int in [1, 3], got {self.depth!r}.")
        for op in self.operands:
            self._check(op, f"operand {op!r}")
        for u in self.unary:
            if "{}" not in u and u not in UNARY_FUNCTIONS:
                raise ValueError(
                    f"`unary` entry {u!r} is not a unary function; known: {sorted(UNARY_FUNCTIONS)}, or a template "
                    "such as 'clip({}, 0.01)'."
                )
            if "{}" not in u and UNARY_FUNCTIONS[u] > 0:
                raise ValueError(f"`unary` entry {u!r} needs a parameter: write a template such as '{u}({{}}, 0.1)'.")
            self._check(self.render_unary(u, "g"), f"unary {u!r}")
        for b in self.binary:
            if b not in BINARY_FUNCTIONS:
                raise ValueError(f"`binary` entry {b!r} is not a binary function; known: {sorted(BINARY_FUNCTIONS)}.")

    @staticmethod
    def _check(text: str, what: str) -> None:
        try:
            parse_rule(text)
        except RuleSyntaxError as err:
            raise type(err)(f"search space {what}: {err.reason}", err.text, err.position) from None

    @staticmethod
    def render_unary(unary: str, inner: str) -> str:
        if unary == "id":
            return inner
        return unary.replace("{}", inner) if "{}" in unary else f"{unary}({inner})"

    def vocabulary(self, kind: str) -> list:
        return {"operand": self.operands, "unary": self.unary, "binary": self.binary}[kind]

    def slots(self, depth: Optional[int] = None) -> list:
        """Token kinds in emission order for a tree of ``depth``."""
        depth = self.depth if depth is None else depth
        if depth == 0:
            return ["operand"]
        child = self.slots(depth - 1)
        return child + child + ["unary", "unary", "binary"]

    def size(self) -> int:
        """Number of distinct token sequences (an upper bound on distinct rules)."""
        total = 1
        for kind in self.slots():
            total *= len(self.vocabulary(kind))
        return total


class SequenceCategorical(D.Independent):
    """Independent categoricals over the token positions: log-prob and entropy sum over the rule."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__(D.Categorical(logits=logits), 1)


class RuleController(nn.Module):
    """LSTM that emits the tokens of a rule, one softmax head per token kind.

    Args:
        space: the :class:`SearchSpace`.
        hidden: LSTM width.
        seed: seed of the initial weights and of the sampling generator.
    """

    def __init__(self, space: SearchSpace, hidden: int = 32, seed: int = 0) -> None:
        super().__init__()
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden <= 0:
            raise ValueError(f"`hidden` must be a positive int, got {hidden!r}.")
        self.space = space
        self.kinds = space.slots()
        sizes = {k: len(space.vocabulary(k)) for k in _KINDS}
        self.max_vocab = max(sizes.values())
        # one embedding table for all kinds plus a start token; offsets map (kind, index) -> row
        offsets, total = {}, 1
        for k in _KINDS:
            offsets[k] = total
            total += sizes[k]
        self.offsets = offsets
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.embed = nn.Embedding(total, hidden)
            self.lstm = nn.LSTM(hidden, hidden, batch_first=True)
            self.heads = nn.ModuleDict({k: nn.Linear(hidden, sizes[k]) for k in _KINDS})
        self.generator = torch.Generator().manual_seed(seed)
        # per position: the embedding offset of the token emitted there, and which logits are valid
        self.register_buffer("_pos_offset", torch.tensor([offsets[k] for k in self.kinds]), persistent=False)
        mask = torch.zeros(len(self.kinds), self.max_vocab, dtype=torch.bool)
        for i, k in enumerate(self.kinds):
            mask[i, : sizes[k]] = True
        self.register_buffer("_valid", mask, persistent=False)

    @property
    def num_tokens(self) -> int:
        return len(self.kinds)

    def _head(self, position: int, h: torch.Tensor) -> torch.Tensor:
        logits = self.heads[self.kinds[position]](h)
        pad = self.max_vocab - logits.shape[-1]
        # padding logits are a large negative number, not -inf, so entropies stay finite
        return nn.functional.pad(logits, (0, pad), value=-1e9) if pad else logits

    def forward(self, action: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits ``[B, K, max_vocab]`` of the token sequences ``action`` ``[B, K]``."""
        batch = action.shape[:-1]
        action = action.reshape(-1, self.num_tokens).long()
        prev = action[:, :-1] + self._pos_offset[:-1]
        start = torch.zeros(action.shape[0], 1, dtype=torch.long, device=action.device)
        out, _ = self.lstm(self.embed(torch.cat([start, prev], dim=1)))
        logits = torch.stack([self._head(i, out[:, i]) for i in range(self.num_tokens)], dim=1)
        return logits.reshape(*batch, self.num_tokens, self.max_vocab)

    @torch.no_grad()
    def sample(self, n: int) -> tuple:
        """Sample ``n`` rules: token tensor ``[n, K]`` and their log-probabilities ``[n]``."""
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ValueError(f"`n` must be a positive int, got {n!r}.")
        device = self._pos_offset.device
        token = torch.zeros(n, 1, dtype=torch.long, device=device)
        state = None
        actions, log_prob = [], torch.zeros(n, device=device)
        for i in range(self.num_tokens):
            out, state = self.lstm(self.embed(token), state)
            logits = self._head(i, out[:, 0])
            probs = torch.softmax(logits.float().cpu(), dim=-1)
            choice = torch.multinomial(probs, 1, generator=self.generator).squeeze(-1).to(device)
            log_prob += torch.log_softmax(logits, -1).gather(-1, choice[:, None]).squeeze(-1)
            actions.append(choice)
            token = (choice + self._pos_offset[i])[:, None]
        return torch.stack(actions, dim=1), log_prob

    def decode(self, tokens) -> str:
        """Rule text of one token sequence."""
        tokens = [int(t) for t in tokens]
        if len(tokens) != self.num_tokens:
            raise ValueError(f"`tokens` must have {self.num_tokens} entries, got {len(tokens)}.")
        it = iter(range(self.num_tokens))

        def build(depth: int) -> str:
            if depth == 0:
                return self.space.operands[tokens[next(it)]]
            left, right = build(depth - 1), build(depth - 1)
            u1 = self.space.unary[tokens[next(it)]]
            u2 = self.space.unary[tokens[next(it)]]
            b = self.space.binary[tokens[next(it)]]
            return f"{b}({self.space.render_unary(u1, left)}, {self.space.render_unary(u2, right)})"

        # canonical text, so equal rules compare equal across runs
        return parse_rule(build(self.space.depth)).text


class ControllerPPO:
    """Trains a :class:`RuleController` on (rule, reward) batches with TorchRL's ``ClipPPOLoss``.

    Args:
        controller: the controller.
        lr: Adam learning rate of the controller.
        clip_epsilon: PPO ratio clip.
        epochs: gradient epochs per batch of rewards.
        entropy_coeff: entropy bonus weight (keeps the search exploring).
        baseline_decay: decay of the moving-average reward baseline.
        normalize_advantage: divide advantages by their batch standard deviation.
        max_grad_norm: gradient clipping.
    """

    def __init__(
        self,
        controller: RuleController,
        lr: float = 5e-3,
        clip_epsilon: float = 0.2,
        epochs: int = 4,
        entropy_coeff: float = 0.01,
        baseline_decay: float = 0.8,
        normalize_advantage: bool = True,
        max_grad_norm: float = 1.0,
    ) -> None:
        for name, value in (("lr", lr), ("clip_epsilon", clip_epsilon), ("max_grad_norm", max_grad_norm)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"`{name}` must be a positive float, got {value!r}.")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs <= 0:
            raise ValueError(f"`epochs` must be a positive int, got {epochs!r}.")
        if not 0.0 <= baseline_decay < 1.0:
            raise ValueError(f"`baseline_decay` must be a float in [0, 1), got {baseline_decay!r}.")
        if not entropy_coeff >= 0:
            raise ValueError(f"`entropy_coeff` must be a non-negative float, got {entropy_coeff!r}.")
        self.controller = controller
        self.epochs = epochs
        self.baseline_decay = float(baseline_decay)
        self.normalize_advantage = bool(normalize_advantage)
        self.max_grad_norm = float(max_grad_norm)
        self.baseline: Optional[float] = None
        self.actor = ProbabilisticTensorDictSequential(
            TensorDictModule(controller, in_keys=[Keys.ACTION], out_keys=[Keys.LOGITS]),
            ProbabilisticTensorDictModule(
                in_keys=[Keys.LOGITS],
                out_keys=[Keys.ACTION],
                distribution_class=SequenceCategorical,
                return_log_prob=True,
                log_prob_key=Keys.LOG_PROB,
            ),
        )
        # no critic: the advantage comes from the moving-average baseline, as in Bello et al.
        self.loss = ClipPPOLoss(
            self.actor,
            critic_network=None,
            clip_epsilon=clip_epsilon,
            entropy_bonus=entropy_coeff > 0,
            entropy_coeff=entropy_coeff if entropy_coeff > 0 else None,
            normalize_advantage=False,
            functional=False,
        )
        self.loss.set_keys(action=Keys.ACTION, sample_log_prob=Keys.LOG_PROB, advantage=Keys.ADVANTAGE)
        self.optimizer = torch.optim.Adam(controller.parameters(), lr=lr)

    def update(self, actions: torch.Tensor, log_probs: torch.Tensor, rewards: torch.Tensor) -> dict:
        """One PPO update on a batch of sampled rules and their rewards; returns diagnostics."""
        rewards = torch.as_tensor(rewards, dtype=torch.float32)
        if rewards.shape != log_probs.shape or actions.shape[0] != rewards.shape[0]:
            raise ValueError(
                f"`rewards` must have one entry per sampled rule ({actions.shape[0]}), got shape {tuple(rewards.shape)}."
            )
        if not torch.isfinite(rewards).all():
            raise ValueError(f"`rewards` must be finite (assign diverged rules a penalty first), got {rewards.tolist()}.")
        if self.baseline is None:
            self.baseline = float(rewards.mean())
        advantage = rewards - self.baseline
        if self.normalize_advantage and rewards.numel() > 1:
            # equal rewards have zero spread: dividing by it would turn rounding noise into huge steps
            spread = float(advantage.std())
            if spread > 1e-6:
                advantage = advantage / spread
        batch = TensorDict(
            {
                Keys.ACTION: actions.long(),
                Keys.LOG_PROB: log_probs.detach().float(),
                Keys.ADVANTAGE: advantage[:, None],
            },
            batch_size=[actions.shape[0]],
        )
        stats: dict = {}
        for _ in range(self.epochs):
            out = self.loss(batch)
            total = out["loss_objective"] + out.get("loss_entropy", torch.zeros(()))
            self.optimizer.zero_grad()
            total.backward()
            grad_norm = nn.utils.clip_grad_norm_(self.controller.parameters(), self.max_grad_norm)
            self.optimizer.step()
            out = out.detach()
            stats = {
                "losses/objective": float(out["loss_objective"]),
                "losses/entropy": float(out.get("entropy", torch.zeros(()))),
                "losses/approx_kl": float(out["kl_approx"]),
                "losses/clip_fraction": float(out["clip_fraction"]),
                "losses/grad_norm": float(grad_norm),
            }
        stats["charts/baseline"] = self.baseline
        stats["charts/mean_reward"] = float(rewards.mean())
        self.baseline = self.baseline_decay * self.baseline + (1 - self.baseline_decay) * float(rewards.mean())
        return stats

    def state_dict(self) -> dict:
        return {
            "controller": self.controller.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "baseline": self.baseline,
            "generator": self.controller.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.controller.load_state_dict(state["controller"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.baseline = state.get("baseline")
        if state.get("generator") is not None:
            self.controller.generator.set_state(state["generator"])
