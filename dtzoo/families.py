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
