"""Combining results files of one landscape computed in parts (`plot2d --shard K/N` on a cluster) into
one: the same settings and weights in every part (only `shard` may differ), each point taken from
whichever part has it, a point held twice with different numbers an error. Merging is idempotent: a
part merged twice, or into an output that already holds some of its points, changes nothing.

`merge_results` works on `Landscape`s in memory; `merge_files` reads the parts, merges them into OUT
(adding to what OUT already holds) and writes OUT atomically under its lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from awp.errors import UserError
from awp.safeio import check_output, exclusive
from landscape.storage.results import (FIELDS, FORMAT, FORMAT_VERSION, Landscape, _short, config_differences,
                                       flat_items)

SHARD_KEY = "shard"  # the one config key in which the parts of one landscape may differ
PATH_KEYS = ("checkpoint",)  # where each job read the weights (a cluster may copy run.h5 to scratch): the sha256 decides
Point = tuple[int, "int | None"]  # (checkpoint, flat grid index), None: the origin


@dataclass
class Merged:
    """A merged landscape, how many points the merge added, and what the grid still lacks."""

    results: Landscape
    added: int  # points OUT did not hold before
    missing: int  # points of the grid in no part (the origin counts once per checkpoint)
    total: int  # points of the grid
    missing_shards: tuple[str, ...] = ()  # "K/N" of the shards holding the missing points (one N merged)

    @property
    def complete(self) -> bool:
        return self.missing == 0


def shard_label(shard: tuple[int, int]) -> str:
    return f"{shard[0]}/{shard[1]}"


def held(results: Landscape) -> set[Point]:
    """The points a landscape holds (its origin once per checkpoint, then its cells off the origin)."""
    done = results.done.reshape(len(results.checkpoints), -1)
    return {(c, f) for c, f in results.points() if (results.origin_done[c] if f is None else done[c, f])}


def _settings(results: Landscape) -> dict:
    return {k: v for k, v in results.config.items() if k != SHARD_KEY}


def differences(a: Landscape, b: Landscape, name_a: str, name_b: str) -> list[str]:
    """What makes `b` another landscape than `a`, one phrase each: config keys (all but `shard` and the
    checkpoint's path), and the grid, directions and weights (sha256) themselves."""
    sa, sb = ({k: v for k, v in _settings(r).items() if k not in PATH_KEYS} for r in (a, b))
    fa, fb = flat_items(sa), flat_items(sb)
    keys = config_differences(sa, sb)
    out = [f"{k} ({name_a}: {_short(fa.get(k))}, {name_b}: {_short(fb.get(k))})" for k in keys]
    if a.grid.dims != b.grid.dims or not all(np.array_equal(x, y) for x, y in zip(a.grid.axes, b.grid.axes)):
        out.append(f"grid ({name_a}: {dict(zip(a.grid.dims, a.grid.shape))}, {name_b}: {dict(zip(b.grid.dims, b.grid.shape))})")
    if a.directions != b.directions and not any(k.startswith("directions") for k in keys):
        out.append("directions")
    if [(c.epoch, c.sha256) for c in a.checkpoints] != [(c.epoch, c.sha256) for c in b.checkpoints]:
        out.append(f"weights sha256 ({name_a}: {', '.join(c.sha256[:12] for c in a.checkpoints[:3])}, "
                   f"{name_b}: {', '.join(c.sha256[:12] for c in b.checkpoints[:3])})")
    return out


def point_name(results: Landscape, c: int, flat: int | None) -> str:
    """'point alpha=0.5, beta=-1 (cell [3, 0])' or 'the origin', with its checkpoint when there are several."""
    where = "the origin (w itself)"
    if flat is not None:
        index = np.unravel_index(int(flat), results.grid.shape)
        coords = ", ".join(f"{d}={results.grid.axes[m][i]:g}" for m, (d, i) in enumerate(zip(results.grid.dims, index)))
        where = f"point {coords} (cell {[int(i) for i in index]})"
    return where if len(results.checkpoints) == 1 else f"{where} of {results.checkpoints[c].label}"


def _values(results: Landscape, c: int, flat: int | None) -> dict[str, float]:
    if flat is None:
        return {n: float(results.origin[n][c]) for n in FIELDS}
    index = (c, *np.unravel_index(int(flat), results.grid.shape))
    return {n: float(results.values[n][index]) for n in FIELDS}


def _same(a: float, b: float) -> bool:
    return a == b or (np.isnan(a) and np.isnan(b))  # bit for bit; an uncomputable value (NaN) equals itself


def merge_results(parts: Sequence[tuple[str, Landscape]], into: tuple[str, Landscape] | None = None) -> Landscape:
    """One landscape holding every point of `parts` ((name, results) pairs) and of `into` (OUT as it was),
    without a shard. Refuses (`UserError`) a part made with other settings or weights, naming what
    differs, and a point two parts hold with different numbers, naming the point."""
    if not parts:
        raise UserError("nothing to merge: give at least one results file")
    ref_name, ref = into if into is not None else parts[0]
    merged = Landscape(ref.grid, list(ref.directions), list(ref.checkpoints), _settings(ref),
                       {k: v for k, v in ref.runtime.items() if k != "parts"},
                       created=ref.created if into is not None else "")
    origin: dict[Point, str] = {}  # the part each point came from, to name both sides of a conflict
    seconds: dict[str, float] = {}  # compute seconds per part, so merging one twice counts it once

    for name, part in ([into] if into is not None else []) + list(parts):
        diff = differences(ref, part, repr(ref_name), repr(name))
        if diff:
            raise UserError(f"cannot merge {name!r} with {ref_name!r}: they were made with other settings "
                            f"({'; '.join(diff)}); merge only shards of one plot2d command (they may differ only in --shard)")
        for key, tensors in part.stored.items():  # directions that cannot be rebuilt from their spec
            mine = merged.stored.setdefault(key, tensors)
            if mine.keys() != tensors.keys() or not all(torch.equal(mine[n], tensors[n]) for n in mine):
                raise UserError(f"{name!r} holds other tensors of direction {key[1]} than {ref_name!r}; they cannot be merged")
        have = held(merged)
        for c, flat in sorted(held(part), key=lambda p: (p[0], -1 if p[1] is None else p[1])):
            point = _values(part, c, flat)
            if (c, flat) in have:
                before = _values(merged, c, flat)
                bad = [n for n in FIELDS if not _same(before[n], point[n])]
                if bad:
                    raise UserError(f"{point_name(merged, c, flat)} differs between {origin.get((c, flat), ref_name)!r} "
                                    f"and {name!r} ({bad[0]}: {before[bad[0]]!r} vs {point[bad[0]]!r}); they were not "
                                    f"computed alike, so they cannot be merged")
                continue
            merged.set_point(c, flat, point)
            origin[(c, flat)] = name
        label = shard_label(part.shard) if part.shard else Path(name).name
        seconds.update(part.runtime.get("parts", {label: float(part.runtime.get("compute_seconds", 0.0))}))
    merged.runtime["parts"] = dict(sorted(seconds.items()))
    merged.runtime["compute_seconds"] = sum(seconds.values())
    return merged


def read_part(path: Path, what: str) -> Landscape:
    """A landscape results file of this version, or one `UserError` line naming it and what is accepted."""
    try:
        results = Landscape.load(path)
    except UserError as e:
        raise UserError(f"{what} {e}; merge takes results files of `landscape plot2d --shard K/N`") from None
    if results.format_version != FORMAT_VERSION:
        raise UserError(f"{what} {str(path)!r} has landscape results format version {results.format_version}; merge "
                        f"takes only version {FORMAT_VERSION} (results of this version of plot2d)")
    return results


def check_arguments(out: str | Path, inputs: Sequence[str | Path]) -> Path:
    """OUT names a .h5 file and at least one input follows it (one `UserError` line otherwise)."""
    out = Path(out)
    if not inputs:
        raise UserError("merge needs at least one shard results file after OUT.h5, e.g. "
                        "`landscape merge plot2d-run.h5 plot2d-run-shard*of4.h5`")
    if out.suffix.lower() not in (".h5", ".hdf5"):
        raise UserError(f"OUT {str(out)!r} names the merged results file; give it a .h5 suffix (figures go beside it)")
    return out


def merge_files(out: str | Path, inputs: Sequence[str | Path], overwrite: bool = False) -> Merged:
    """Merge the results files `inputs` into `out`, adding to the points `out` already holds (unless
    `overwrite`), and write `out` atomically; returns what it holds and lacks."""
    out = check_arguments(out, inputs)
    paths = [Path(p) for p in inputs]
    parts = [(str(p), read_part(p, "SHARD")) for p in paths]
    check_output(out, "OUT", inputs=paths, overwrite=overwrite, writes="landscape results file", resumes=(FORMAT,))
    with exclusive(out):
        into = None
        if out.exists() and not overwrite:
            into = (str(out), read_part(out, "OUT"))
            if into[1].shard is not None:
                raise UserError(f"OUT {str(out)!r} holds shard {shard_label(into[1].shard)} itself; name a new file for "
                                f"the merged grid, e.g. `landscape merge merged.h5 {out.name} ...`")
        merged = merge_results(parts, into)
        merged.save(out)
    left = merged.pending()
    counts = {p.shard[1] for _, p in parts if p.shard is not None}
    shards: tuple[str, ...] = ()
    if len(counts) == 1 and left:  # which shards hold the missing points: the same round-robin as `points`
        n, order = counts.pop(), {p: i for i, p in enumerate(merged.points())}
        shards = tuple(shard_label(s) for s in sorted({(order[p] % n + 1, n) for p in left}))
    added = len(held(merged)) - (len(held(into[1])) if into is not None else 0)
    return Merged(merged, added, len(left), len(merged.points()), shards)
