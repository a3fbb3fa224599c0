"""The Trajectory Transformer (Janner et al. 2021): a second model family beside the DT.

>>> from dtzoo.tt import TTConfig, TrajectoryTransformer, tokenize, train_tt, TTAgent
>>> tt = tokenize(load_trajectories("dtzoo/pendulum/scripted-v0"))
>>> result = train_tt(tt, TTRecipe(steps=2000), seed=0)
>>> agent = TTAgent(result.model, result.model.cfg, tt.discretizer, action_space=space)

On TransformerLens (the `interp` extra, so not imported here): `dtzoo.tt.hooked`, or
`dtzoo.interp.to_transformer_lens(model)` for either family.
"""

from dtzoo.tt.data import TTData, WindowSampler, discounted_values, tokenize, transitions
from dtzoo.tt.discretize import Discretizer
from dtzoo.tt.model import FAMILY, TOKEN_KINDS, TrajectoryTransformer, TTConfig
from dtzoo.tt.plan import PlanSettings, TTAgent, beam_plan, greedy_decode, rollout
from dtzoo.tt.train import TTRecipe, TTTrainResult, train_tt

__all__ = [
    "FAMILY",
    "TOKEN_KINDS",
    "Discretizer",
    "PlanSettings",
    "TTAgent",
    "TTConfig",
    "TTData",
    "TTRecipe",
    "TTTrainResult",
    "TrajectoryTransformer",
    "WindowSampler",
    "beam_plan",
    "discounted_values",
    "greedy_decode",
    "rollout",
    "tokenize",
    "train_tt",
    "transitions",
]
