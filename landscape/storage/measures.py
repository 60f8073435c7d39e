"""Sharpness results files (`landscape sharpness`): every measure of `landscape.core.measures.MEASURES`
at every checkpoint and scope, with its uncertainty; HDF5 of plain arrays and JSON, no pickles,
rewritten atomically after every value, so kill -9 loses at most the value in flight.

Layout (format "awp-landscape-measures", version 1; C checkpoints, M measures, S scopes):

    /                        attrs: format, format_version, config (JSON: what decides the numbers),
                                    runtime (JSON), created, updated
    /measures, /scopes       str [M], [S]: measure names and scope labels ("all", a glob, or a block)
    /scope_params            str [S]: JSON list of the parameter names of each scope
    /checkpoints/source, /sha256, /label   str [C]; /checkpoints/epoch float64 [C] (NaN: none)
    /value, /se              float64 [C, M, S]: NaN until computed (or where a measure is undefined)
    /done                    bool [C, M, S]
    /details                 str [C, M, S]: JSON of what went into each value (rho0, draws, sigma ...)
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from awp.store import transaction
from landscape.core.flatness import Value
from landscape.storage.results import CheckpointId, open_results

FORMAT = "awp-landscape-measures"
FORMAT_VERSION = 1


@dataclass
class MeasureResults:
    """Values [C, M, S] of measures at checkpoints over scopes, NaN until computed."""

    checkpoints: list[CheckpointId]
    measures: list[str]
    scopes: dict[str, list[str]]  # label -> parameter names
    config: dict
    runtime: dict = field(default_factory=dict)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    value: np.ndarray = None  # type: ignore[assignment]
    se: np.ndarray = None  # type: ignore[assignment]
    done: np.ndarray = None  # type: ignore[assignment]
    details: np.ndarray = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        shape = (len(self.checkpoints), len(self.measures), len(self.scopes))
        if self.value is None:
            self.value = np.full(shape, np.nan)
            self.se = np.full(shape, np.nan)
            self.done = np.zeros(shape, dtype=bool)
            self.details = np.full(shape, "{}", dtype=object)

    @property
    def scope_labels(self) -> list[str]:
        return list(self.scopes)

    def pending(self) -> list[tuple[int, int, int]]:
        """(checkpoint, measure, scope) not computed yet, checkpoint by checkpoint, scope by scope."""
        return [(c, m, s) for c in range(len(self.checkpoints)) for s in range(len(self.scopes))
                for m in range(len(self.measures)) if not self.done[c, m, s]]

    def set(self, c: int, m: int, s: int, v: Value) -> None:
        self.value[c, m, s], self.se[c, m, s] = v.value, v.se
        self.details[c, m, s] = json.dumps({k: (None if isinstance(x, float) and not math.isfinite(x) else x)
                                            for k, x in v.details.items()}, sort_keys=True)
        self.done[c, m, s] = True

    def get(self, measure: str, scope: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(value [C], se [C]) of one measure over one scope (the first, e.g. "all", by default)."""
        m = self.measures.index(measure)
        s = 0 if scope is None else self.scope_labels.index(scope)
        return self.value[:, m, s], self.se[:, m, s]

    @property
    def complete(self) -> bool:
        return bool(self.done.all())

    @property
    def epochs(self) -> np.ndarray:
        return np.array([np.nan if c.epoch is None else c.epoch for c in self.checkpoints], dtype=float)

    def save(self, path: str | Path) -> None:
        """Write everything to `path` atomically (a temporary file moved over the old one)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        strings = h5py.string_dtype()
        with transaction(path, create=True) as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["config"] = json.dumps(self.config, sort_keys=True)
            f.attrs["runtime"] = json.dumps(self.runtime, sort_keys=True)
            f.attrs["created"] = self.created
            f.attrs["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            f.create_dataset("measures", data=self.measures, dtype=strings)
            f.create_dataset("scopes", data=list(self.scopes), dtype=strings)
            f.create_dataset("scope_params", data=[json.dumps(v) for v in self.scopes.values()], dtype=strings)
            g = f.create_group("checkpoints")
            g.create_dataset("source", data=[c.source for c in self.checkpoints], dtype=strings)
            g.create_dataset("sha256", data=[c.sha256 for c in self.checkpoints], dtype=strings)
            g.create_dataset("label", data=[c.label for c in self.checkpoints], dtype=strings)
            g["epoch"] = self.epochs
            f["value"], f["se"], f["done"] = self.value, self.se, self.done
            f.create_dataset("details", data=self.details.reshape(-1).tolist(), dtype=strings)

    @classmethod
    def load(cls, path: str | Path) -> "MeasureResults":
        """Read a sharpness results file; anything else is a one-line `UserError` naming it."""
        with open_results(path, FORMAT, FORMAT_VERSION, "sharpness results") as f:
            text = lambda d: [s.decode() if isinstance(s, bytes) else str(s) for s in d[()]]  # noqa: E731
            g = f["checkpoints"]
            epochs = g["epoch"][()]
            ckpts = [CheckpointId(src, None if np.isnan(e) else int(e), sha, label)
                     for src, sha, label, e in zip(text(g["source"]), text(g["sha256"]), text(g["label"]), epochs)]
            scopes = dict(zip(text(f["scopes"]), (json.loads(s) for s in text(f["scope_params"]))))
            value = f["value"][()]
            details = np.array(text(f["details"]), dtype=object).reshape(value.shape)
            return cls(ckpts, text(f["measures"]), scopes, json.loads(f.attrs["config"]),
                       json.loads(f.attrs.get("runtime", "{}")), str(f.attrs.get("created", "")),
                       value, f["se"][()], f["done"][()].astype(bool), details)
