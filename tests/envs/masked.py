"""A second, tiny environment for the engine's tests: a walk on a line with an action mask.

The agent stands on one of `SIZE` cells and reaches the last one for a reward of 1
(a terminal state). Actions: left, right, stay, and teleport (straight to the goal),
which is only valid on cell 0; left is invalid on cell 0. An unmasked policy biased
towards teleport would take it everywhere, so a test can see the mask at work.
"""

import jax
import jax.numpy as jnp
from flax import struct

from jaxtrade.envs.base import Environment, register

SIZE = 6
LEFT, RIGHT, STAY, TELEPORT = range(4)


@struct.dataclass
class WalkState:
    pos: jax.Array  # int32 [], cell
    step: jax.Array  # int32 [], steps taken this episode


@struct.dataclass
class WalkParams:
    episode_length: jax.Array  # int32 []


class MaskedWalk(Environment[WalkState, WalkParams]):
    name = "masked-walk"
    num_actions = 4
    obs_dim = SIZE + 1
    action_names = ("left", "right", "stay", "teleport")

    def __init__(self, market=None):  # the registry passes the run's market; unused
        pass

    def make_params(self, split="train", episode_length=16) -> WalkParams:
        return WalkParams(jnp.int32(min(episode_length, 16)))

    def reset_env(self, key, params):
        state = WalkState(jax.random.randint(key, (), 0, SIZE - 1), jnp.int32(0))
        return self.get_obs(state, params), state

    def get_obs(self, state, params):
        progress = (state.step / params.episode_length)[None]
        return jnp.concatenate([jax.nn.one_hot(state.pos, SIZE), progress]).astype(jnp.float32)

    def action_mask(self, state, params):
        return jnp.array([state.pos > 0, True, True, state.pos == 0])

    def step_env(self, key, state, action, params):
        move = jnp.array([-1, 1, 0, SIZE])[action]
        pos = jnp.clip(state.pos + move, 0, SIZE - 1)
        new = WalkState(pos, state.step + 1)
        terminated = pos == SIZE - 1
        truncated = (new.step >= params.episode_length) & ~terminated
        reward = terminated.astype(jnp.float32) - 0.01
        # The rule itself, not `self.action_mask`: a subclass without the mask still counts.
        info = {"terminated": terminated,
                "invalid": ~MaskedWalk.action_mask(self, state, params)[action]}
        return self.get_obs(new, params), new, reward, terminated | truncated, info

    metric_info_keys = ("invalid",)

    def step_metrics(self, info):
        return {"invalid_rate": info["invalid"].mean()}


register(MaskedWalk.name, MaskedWalk)
