"""dtzoo: a model zoo and checkpoint hub for Decision Transformers.

    >>> import dtzoo
    >>> model = dtzoo.load("pendulum-1L-seed0")       # from the Hugging Face Hub (default)
    >>> agent = dtzoo.Agent(model, target_return=-150)      # config: model.config
    >>> action = agent.act(obs)
    >>> tt = dtzoo.load("hopper-tt-4L-seed0")           # a Trajectory Transformer
    >>> planner = dtzoo.make_agent(tt)                   # beam search; any family

Heavy imports (torch, gymnasium) happen on first use, so `dtzoo --help` stays fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "load",
    "revisions",
    "Agent",
    "make_agent",
    "DecisionTransformer",
    "DTConfig",
]


def __getattr__(name: str):
    if name == "load":
        from dtzoo.api import load

        return load
    if name == "revisions":  # (step, model) for every training-time checkpoint, in step order
        from dtzoo.dynamics import revisions

        return revisions
    if name in ("Agent", "make_agent"):
        from dtzoo import agent

        return getattr(agent, name)
    if name in ("DecisionTransformer", "DTConfig"):
        from dtzoo import model

        return getattr(model, name)
    raise AttributeError(f"module 'dtzoo' has no attribute {name!r}")
