"""Model families in the zoo, by the name config.json records in `family`.

- `decision-transformer` (Chen et al. 2021): dtzoo.model; config.json has no `family` key.
- `trajectory-transformer` (Janner et al. 2021): dtzoo.tt; model ids carry the tag `tt`
  (`hopper-tt-4L-seed0`), grids choose it with `family: tt`.

    >>> FAMILIES["tt"]
    'trajectory-transformer'
"""

DT, TT = "decision-transformer", "trajectory-transformer"
FAMILY_TAGS = {DT: None, TT: "tt"}  # what a model id shows before its layers
FAMILIES = {"dt": DT, "tt": TT}  # the registry's `family:` values
SHORT_NAMES = {name: short for short, name in FAMILIES.items()}  # the leaderboard's column


def require_dt(config, what: str) -> None:
    """A one-line UsageError where `what` needs a Decision Transformer (return conditioning,
    the transformers export, the DT's interpretability commands).

    >>> require_dt(model.config, "--rtg-sweep")
    """
    from dtzoo.errors import UsageError

    family = getattr(config, "family", DT)
    if family != DT:
        raise UsageError(
            f"{what} works on Decision Transformers; {config.model_id} is a {family} "
            "(see docs/tt.md for what it offers)"
        )
