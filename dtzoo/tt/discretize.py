"""Per-dimension discretisation of transitions into tokens, as in the Trajectory Transformer.

Each dimension of the flat transition array (observation, action, reward, value) gets its own
N + 1 bin edges: "quantile" edges put the same number of data points in every bin (the
paper's QuantileDiscretizer), "uniform" edges split [min, max] evenly. A value is encoded as
the largest i with x >= edges[i] (clipped to 0..N-1) and decoded as its bin's centre
(edges[i] + edges[i + 1]) / 2, so the round trip is within half a bin for values in range.

    >>> disc = Discretizer.fit(transitions, n_bins=100, kind="quantile")
    >>> tokens = disc.encode(transitions)               # (N, dim) int64 in 0..99
    >>> approx = disc.decode(tokens)                    # (N, dim) bin centres
    >>> Discretizer.from_dict(json.loads(json.dumps(disc.to_dict())))  # plain lists, no pickle
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dtzoo.errors import DatasetError

KINDS = ("quantile", "uniform")


@dataclass(frozen=True, eq=False)  # arrays: compare with np.array_equal
class Discretizer:
    """Fitted bin edges: `edges[:, d]` are the N + 1 ascending edges of dimension d."""

    edges: np.ndarray  # (n_bins + 1, dim) float64
    kind: str = "quantile"

    @property
    def n_bins(self) -> int:
        return self.edges.shape[0] - 1

    @property
    def dim(self) -> int:
        return self.edges.shape[1]

    @property
    def centres(self) -> np.ndarray:
        """(n_bins, dim): what each token decodes to."""
        return (self.edges[:-1] + self.edges[1:]) / 2.0

    @property
    def widths(self) -> np.ndarray:
        """(n_bins, dim): each bin's width (0 where the data repeats one value)."""
        return np.diff(self.edges, axis=0)

    @classmethod
    def fit(cls, data: np.ndarray, n_bins: int = 100, kind: str = "quantile") -> "Discretizer":
        """Edges from (N, dim) data: `Discretizer.fit(x, 100, "uniform").edges.shape` ->
        (101, dim)."""
        data = np.asarray(data, np.float64)
        if kind not in KINDS:
            raise DatasetError(f"unknown discretisation {kind!r}: use one of {', '.join(KINDS)}")
        if data.ndim != 2 or len(data) == 0:
            raise DatasetError(f"cannot fit bins to data of shape {data.shape}: need (N, dim)")
        if n_bins < 1:
            raise DatasetError(f"n_bins must be >= 1, got {n_bins}")
        if not np.isfinite(data).all():
            raise DatasetError("cannot fit bins to data that contain NaN or inf")
        if kind == "quantile":  # the paper's thresholds: sorted data at N + 1 evenly spaced ranks
            ranks = np.linspace(0, len(data) - 1, n_bins + 1).astype(np.int64)
            edges = np.sort(data, axis=0)[ranks]
        else:
            edges = np.linspace(data.min(axis=0), data.max(axis=0), n_bins + 1)
        return cls(edges=edges, kind=kind)

    def encode(self, x: np.ndarray, dims: slice = slice(None)) -> np.ndarray:
        """(..., k) values of dimensions `dims` -> (..., k) int64 tokens in 0..n_bins-1; values
        outside the fitted range go to the first or last bin.

        >>> disc.encode(obs, dims=slice(0, obs_dim))       # an observation alone
        """
        edges = self.edges[:, dims]
        x = np.asarray(x, np.float64)
        if x.shape[-1] != edges.shape[1]:
            raise DatasetError(f"expected {edges.shape[1]} values per row, got {x.shape[-1]}")
        out = np.empty(x.shape, np.int64)
        for d in range(edges.shape[1]):  # per dimension: edges differ, dims are few
            # side="right": the largest i with x >= edges[i] (the paper's rule)
            out[..., d] = np.searchsorted(edges[:, d], x[..., d], side="right") - 1
        return np.clip(out, 0, self.n_bins - 1)

    def decode(self, tokens: np.ndarray, dims: slice = slice(None)) -> np.ndarray:
        """(..., k) tokens of dimensions `dims` -> (..., k) bin centres (float64)."""
        centres = self.centres[:, dims]
        tokens = np.clip(np.asarray(tokens, np.int64), 0, self.n_bins - 1)
        return np.take_along_axis(centres, tokens.reshape(-1, centres.shape[1]), axis=0).reshape(
            tokens.shape
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: `{"kind": "quantile", "n_bins": 100, "edges": [[...dim...], ...]}`
        (n_bins + 1 rows of `dim` floats; float64, so a JSON round trip is exact)."""
        return {"kind": self.kind, "n_bins": self.n_bins, "edges": self.edges.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Discretizer":
        """Inverse of to_dict: `Discretizer.from_dict(config["discretizer"])`."""
        edges = np.asarray(d["edges"], np.float64)
        if edges.ndim != 2 or edges.shape[0] != int(d["n_bins"]) + 1:
            raise DatasetError(
                f"discretizer edges of shape {edges.shape} do not match n_bins {d['n_bins']}"
            )
        if (np.diff(edges, axis=0) < 0).any():
            raise DatasetError("discretizer edges must be ascending in every dimension")
        return cls(edges=edges, kind=str(d.get("kind", "quantile")))
