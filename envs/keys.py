"""TensorDict keys of the layerwise environment, declared once for the env, losses and scripts."""

GROUP = "agents"
OBSERVATION = (GROUP, "observation")
MASK = (GROUP, "mask")
ACTION = (GROUP, "action")
REWARD = (GROUP, "reward")
#: A recurrent actor's per-agent state before a decision (added by ganno_lightning.agents.networks.recurrent_env).
POLICY_STATE = (GROUP, "policy_state")
#: Training-only facts per agent for a critic, never for the actor (``env.privileged``).
PRIVILEGED = (GROUP, "privileged")
DONE = "done"
TERMINATED = "terminated"
TRUNCATED = "truncated"
#: Per-episode facts the env reports next to the observation (root level).
EPISODE_LOSS = "interval_loss"  # interval-mean training loss behind the latest observation
NUM_AGENTS = "num_agents"
DIVERGED = "diverged"  # the run diverged on this step (``terminated`` also ends a run scored at its horizon)
LONG_RUN = "long_run"  # the episode is a long run (``env.long_run_prob``), whether or not its agents are told
