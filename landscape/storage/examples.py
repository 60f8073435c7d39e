"""Per-example evaluation results (`landscape eval`): which test examples each attack fooled, per checkpoint;
HDF5 of plain arrays and JSON, rewritten atomically as batches finish, so an interrupted evaluation
resumes and a finished one can be compared example by example (paired tests between models).

Layout (format "awp-landscape-eval-examples", version 1):

    /                              attrs: format, format_version, config (JSON: what decides the numbers:
                                          data, samples, seed, batch size, threat model), created, updated
    /checkpoints/<sha256>          attrs: ident (JSON: source, epoch, sha256, label)
    /checkpoints/<sha256>/labels   int64 [N]: the labels of the evaluated examples, in order
    /checkpoints/<sha256>/<attack> int8 [N]: 1 robust, 0 fooled, -1 not yet computed; attrs seconds, settings (JSON)
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from awp.robustness.run import Tally
from awp.store import transaction
from landscape.storage.results import CheckpointId, open_results, refuse_if_stale

FORMAT = "awp-landscape-eval-examples"
FORMAT_VERSION = 1


@dataclass
class CheckpointResults:
    ident: CheckpointId
    labels: np.ndarray
    tallies: dict[str, Tally] = field(default_factory=dict)
    settings: dict[str, dict] = field(default_factory=dict)


@dataclass
class ExampleResults:
    """Every checkpoint's per-attack tallies under one config."""

    config: dict[str, Any]
    checkpoints: dict[str, CheckpointResults] = field(default_factory=dict)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    def entry(self, ident: CheckpointId, labels: np.ndarray) -> CheckpointResults:
        """The results of `ident` (by its weights' sha256), new if absent; stored labels must match."""
        found = self.checkpoints.get(ident.sha256)
        if found is None:
            found = self.checkpoints[ident.sha256] = CheckpointResults(ident, labels.astype(np.int64))
        elif not np.array_equal(found.labels, labels):
            raise AssertionError("same config and weights but other examples: the data changed under the file")
        return found

    def save(self, path: str | Path) -> None:
        with transaction(path, create=True) as f:
            f.attrs.update(format=FORMAT, format_version=FORMAT_VERSION, config=json.dumps(self.config, sort_keys=True),
                           created=self.created, updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            root = f.create_group("checkpoints")
            for sha, c in self.checkpoints.items():
                g = root.create_group(sha)
                g.attrs["ident"] = json.dumps(asdict(c.ident), sort_keys=True)
                g.create_dataset("labels", data=c.labels)
                for name, t in c.tallies.items():
                    ds = g.create_dataset(name, data=t.robust)
                    ds.attrs["seconds"] = t.seconds
                    ds.attrs["settings"] = json.dumps(c.settings.get(name, {}), sort_keys=True)

    @classmethod
    def load(cls, path: str | Path) -> "ExampleResults":
        with open_results(path, FORMAT, FORMAT_VERSION, "per-example evaluation") as f:
            out = cls(json.loads(f.attrs["config"]), created=str(f.attrs.get("created", "")))
            for sha, g in f["checkpoints"].items():
                c = CheckpointResults(CheckpointId(**json.loads(g.attrs["ident"])), np.asarray(g["labels"][()]))
                for name, ds in g.items():
                    if name != "labels":
                        c.tallies[name] = Tally(np.asarray(ds[()], dtype=np.int8), float(ds.attrs.get("seconds", 0.0)))
                        c.settings[name] = json.loads(ds.attrs.get("settings", "{}"))
                out.checkpoints[sha] = c
        return out


def open_or_resume(path: Path, config: dict[str, Any], overwrite: bool) -> ExampleResults:
    """The results at `path` when they were computed under `config` (resume), fresh ones when there is no
    file or `overwrite`; other settings are refused, naming the keys that differ."""
    if overwrite or not path.exists():
        return ExampleResults(config)
    stored = ExampleResults.load(path)
    refuse_if_stale(path, stored.config, config)
    return stored
