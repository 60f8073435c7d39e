"""The one compute loop of every landscape (1-D, 2-D, N-D): pending points of a `Landscape` taken in
chunks, shared round-robin among torchrun ranks, gathered to rank 0 (the one writer) once per chunk,
and flushed after each, so kill -9 loses at most the chunk in flight. Alg. 1 lines 8-16 at every point.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence


import torch
from torch import Tensor, nn

from awp.attacks import AttackConfig
from awp.kernels import Kernels
from awp.distributed import on_main
from awp.stopping import stop_requested
from awp.weights import snapshot
from landscape.core import engine
from landscape.core.points import evaluate_many
from landscape.core.directions import DIRECTIONS, DirectionContext, build_direction, moved_names
from landscape.core.objective import Objective
from landscape.pipeline import dist
from landscape.pipeline.progress import PointBar
from landscape.storage.results import FIELDS, Landscape

Build = Callable[[torch.device], nn.Module]  # weights of one checkpoint as a model on a device (eval mode)


@dataclass
class Job:
    """Everything a landscape's points need besides their coordinates: a model builder per checkpoint
    (in the results' order), the fixed batches, the attack run at every point, the BN mode and its
    clean inputs, the `fixed_adv` ablation, and the weights `interpolate` directions lead to (by sha256)."""

    builds: Sequence[Build]
    batches: Sequence[engine.ProbeBatch]
    attack: AttackConfig
    bn: str = "eval"
    bn_inputs: Sequence[Tensor] = ()
    fixed_adv: bool = False
    targets: Mapping[str, Build] = field(default_factory=dict)
    chunk: int = 4  # points per rank between flushes (rounded up to a multiple of `points`)
    points: int = 1  # weight points per pass (`--points-per-batch`): 1 moves the model in place, P > 1 vmaps
    kernels: Kernels = Kernels()  # precision (autocast) and memory format; `builds` return prepared models


class _Current:
    """The model of one checkpoint at a time on this rank, with its saved w, its directions (built
    lazily, cached on the device) and, for `fixed_adv`, its examples made once at w."""

    def __init__(self, results: Landscape, job: Job, device: torch.device) -> None:
        self.results, self.job, self.device = results, job, device
        self.c: int | None = None
        self.stack = contextlib.ExitStack()
        self.targets: dict[str, dict[str, Tensor]] = {}  # interpolation targets' weights, shared by checkpoints

    def close(self) -> None:
        self.stack.close()
        self.c = None

    def at(self, c: int) -> "_Current":
        if c == self.c:
            return self
        self.close()
        self.model = self.job.builds[c](self.device).eval()
        self.stack.enter_context(engine.frozen(self.model))
        self.base = snapshot(dict(self.model.named_parameters()))
        self.w_cpu = {n: t.to("cpu") for n, t in self.base.items()}  # directions come from CPU weights
        self.dirs: dict[int, dict[str, Tensor]] = {}
        # what the kinds found from the loss at w (hessian, awp) need: the model there, batches, attack, BN mode
        self.at_w = Objective(self.model, self.job.batches, self.job.attack, None, self.job.bn, self.job.bn_inputs)
        self.cache: dict = {}  # shared by this checkpoint's directions (one Lanczos run for the top K)
        self.fixed = None
        if self.job.fixed_adv:  # the ablation: examples made once against w
            with engine.bn_mode(self.job.bn)(self.model, self.job.bn_inputs), self.job.kernels.autocast(self.device):
                self.fixed = engine.adversarial_examples(self.model, self.job.batches, self.job.attack)
        self.c = c
        return self

    def _target(self, ident: Mapping) -> dict[str, Tensor]:
        sha = str(ident.get("sha256"))
        if sha not in self.targets:
            build = self.job.targets.get(sha)
            if build is None:
                raise KeyError(f"no weights for the interpolation target {ident.get('label')}")
            self.targets[sha] = {n: p.detach().cpu() for n, p in build(torch.device("cpu")).named_parameters()}
        return self.targets[sha]

    def direction(self, k: int) -> dict[str, Tensor]:
        if k not in self.dirs:
            spec = self.results.directions[k]
            ctx = DirectionContext(target=self._target, stored=self.results.stored.get((self.c, k)), at_w=self.at_w,
                                   cache=self.cache)
            d = build_direction(spec, self.w_cpu, ctx)  # Alg. 1 lines 2-7 for a random one
            if not DIRECTIONS.lookup(spec["kind"]).regenerable:
                self.results.stored[(self.c, k)] = d
            if ctx.found:  # e.g. the eigenvalue of a hessian direction: kept beside its spec, per checkpoint
                # in new objects: the specs a caller passed (and its config may hold) stay as they were
                specs = list(self.results.directions)
                specs[k] = {**spec, "found": {**spec.get("found", {}), str(self.c): ctx.found}}
                self.results.directions = specs
            self.dirs[k] = {n: t.to(self.base[n].device, self.base[n].dtype) for n, t in d.items()}
        return self.dirs[k]

    def prepare(self, checkpoints: Sequence[int], ctx: dist.DistContext) -> bool:
        """Find the directions that cannot be rebuilt from their spec (hessian, awp) before any point of
        their checkpoint: on rank 0, sent to every other rank (all move along the same tensors) and kept
        in the results, which the caller flushes, so a resume never searches again. Returns whether any
        was found."""
        found = False
        for c in checkpoints:
            for k, spec in enumerate(self.results.directions):
                if DIRECTIONS.lookup(spec["kind"]).regenerable or (c, k) in self.results.stored:
                    continue
                on_main(ctx, lambda: self.at(c).direction(k))  # a UserError there stops every rank
                if ctx.distributed:
                    self._share(c, k, ctx)
                found = True
        return found

    def _share(self, c: int, k: int, ctx: dist.DistContext) -> None:
        """Rank 0's stored direction (c, k) on every rank: one broadcast of its flattened tensors."""
        import torch.distributed as tdist

        self.at(c)
        names = moved_names(self.results.directions[k], self.w_cpu)
        sizes = [self.w_cpu[n].numel() for n in names]
        device = dist.comm_device(ctx)
        if ctx.is_main:
            d = self.results.stored[(c, k)]
            flat = torch.cat([d[n].reshape(-1).to(torch.float32) for n in names]).to(device)
        else:
            flat = torch.empty(sum(sizes), dtype=torch.float32, device=device)
        tdist.broadcast(flat, src=0)
        if not ctx.is_main:
            parts = torch.split(flat.cpu(), sizes)
            self.results.stored[(c, k)] = {n: p.reshape(self.w_cpu[n].shape).clone() for n, p in zip(names, parts)}

    def terms(self, flat: int | None) -> list[tuple[dict[str, Tensor], float]]:
        return [] if flat is None else [(self.direction(k), c) for k, c in self.results.grid.terms(flat)]

    def evaluate(self, flats: Sequence[int | None]) -> list[dict[str, float]]:
        """The values at these points of the current checkpoint: in place one by one, or all in one
        vmapped pass (`landscape.core.points`) when there are several."""
        job, kw = self.job, dict(base=self.base, bn=self.job.bn, bn_inputs=self.job.bn_inputs, fixed_adv=self.fixed)
        with job.kernels.autocast(self.device):  # --precision: every forward of the point (fp32: none)
            if len(flats) == 1:
                return [engine.evaluate_at(self.model, self.terms(flats[0]), job.batches, job.attack, **kw).reduce()]  # Eq. 5
            sums = evaluate_many(self.model, [self.terms(f) for f in flats], job.batches, job.attack, **kw)
        return [s.reduce() for s in sums]


def groups(slots: Sequence[tuple[int, int | None]], size: int) -> list[list[tuple[int, int | None]]]:
    """Consecutive (checkpoint, point) slots in groups of at most `size` points of one checkpoint each."""
    out: list[list[tuple[int, int | None]]] = []
    for slot in slots:
        if out and len(out[-1]) < size and out[-1][0][0] == slot[0]:
            out[-1].append(slot)
        else:
            out.append([slot])
    return out


def compute(results: Landscape, job: Job, ctx: dist.DistContext, *, flush: Callable[[], None] = lambda: None,
            progress: bool = False, describe: str = "landscape") -> tuple[int, bool]:
    """Compute this rank's share of `results.pending()` in rounds of `job.chunk` points per rank; after
    each round rank 0 stores every rank's points and calls `flush`. Stops after the round in which
    Ctrl-C reached any rank. Returns (points stored, stopped early); only rank 0's `results` fill."""
    todo = results.pending()
    mine = todo[ctx.rank :: ctx.world]  # round-robin: near-equal shares, neighbouring points apart
    per_rank = -(-len(todo) // ctx.world)
    chunk = -(-job.chunk // job.points) * job.points  # whole passes of P points between flushes
    rounds = -(-per_rank // chunk) if per_rank else 0
    current = _Current(results, job, ctx.device)
    stored, width = 0, 4 + len(FIELDS)  # row: valid, checkpoint, is origin, flat index, fields
    t0 = time.perf_counter()
    try:
        if current.prepare(sorted({c for c, _ in todo}), ctx) and ctx.is_main:
            flush()  # the directions found (a Lanczos run, AWP's v) are kept before the first point
        with PointBar(len(todo), progress and ctx.is_main, describe) as bar:
            for r in range(rounds):
                rows = torch.zeros((chunk, width), dtype=torch.float64)
                slot = 0
                for group in groups(mine[r * chunk : (r + 1) * chunk], job.points):
                    values = current.at(group[0][0]).evaluate([flat for _, flat in group])
                    for (c, flat), point in zip(group, values):
                        rows[slot] = torch.tensor([1.0, c, flat is None, -1 if flat is None else flat]
                                                  + [point[k] for k in FIELDS], dtype=torch.float64)
                        slot += 1
                gathered = dist.gather_rows(ctx, rows)  # one collective per round, not per point
                if ctx.is_main:
                    for row in gathered.tolist():
                        if row[0] == 1.0:
                            results.set_point(int(row[1]), None if row[2] else int(row[3]), dict(zip(FIELDS, row[4:])))
                            stored += 1
                    bar.advance(int(gathered[:, 0].sum()))
                    results.runtime["compute_seconds"] = results.runtime.get("compute_seconds", 0.0) + time.perf_counter() - t0
                    t0 = time.perf_counter()
                    flush()
                if dist.any_flag(ctx, stop_requested()) and r + 1 < rounds:  # Ctrl-C on any rank
                    return stored, True
    finally:
        current.close()
    return stored, False
