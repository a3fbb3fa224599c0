"""The Trajectory Transformer (Janner et al. 2021): a second model family beside the DT.

>>> from dtzoo.tt import TTConfig, TrajectoryTransformer, tokenize, train_tt, TTAgent
>>> tt = tokenize(load_trajectories("dtzoo/pendulum/scripted-v0"))
>>> result = train_tt(tt, TTRecipe(steps=2000), seed=0)
>>> agent = TTAgent(result.model, result.model.cfg, tt.discretizer, action_space=space)

On TransformerLens (the `interp` extra, so not imported here): `dtzoo.tt.hooked`, or
`dtzoo.interp.to_transformer_lens(model)` for either family.
"""

# Loaded on first use (PEP 562): dtzoo.tt.settings, which the registry reads, needs no torch.
_WHERE = {
    "TTData": "data",
    "WindowSampler": "data",
    "discounted_values": "data",
    "tokenize": "data",
    "transitions": "data",
    "Discretizer": "discretize",
    "TrajectoryTransformer": "model",
    "FAMILY": "settings",
    "TOKEN_KINDS": "settings",
    "TTConfig": "settings",
    "TTRecipe": "settings",
    "PlanSettings": "settings",
    "TTAgent": "plan",
    "beam_plan": "plan",
    "greedy_decode": "plan",
    "rollout": "plan",
    "TTTrainResult": "train",
    "train_tt": "train",
}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'dtzoo.tt' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"dtzoo.tt.{_WHERE[name]}"), name)


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
