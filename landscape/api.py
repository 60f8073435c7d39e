"""The Python API: weight loss landscapes (Eq. 5, Algorithm 1) of any `nn.Module` on any data.

    import landscape
    res = landscape.probe_model(model, loader, attack=AttackConfig(eps=8/255, step_size=2/255, steps=10))
    res.sharpness()[0].mean["rise"]; res.plot("probe.png"); res.html("probe.html"); res.save("probe.h5")

The model takes inputs in [0, 1] (normalization inside it); `data` is a Dataset of (x, y), a DataLoader
or any iterable of (x, y) batches, materialized once with fixed random starts. The model's weights
are moved in place and restored bit for bit; its device and train/eval mode are restored afterwards.
Bad values raise `awp.errors.UserError` naming the parameter. The CLI's `probe` and `plot2d` run the
same pipeline (`landscape.pipeline.run`).
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from awp.attacks import AttackConfig
from awp.config import resolve_device
from awp.errors import UserError
from awp.kernels import Kernels
from landscape.core import engine
from landscape.core import sharpness as sharp
from landscape.core.directions import DIRECTIONS, NORMALIZATIONS, random_specs
from landscape.core.points import parse_points, points_per_pass
from landscape.pipeline.compute import Job
from landscape.pipeline.run import Plan, execute
from landscape.storage.results import CheckpointId, Grid, Landscape, check_size, weights_sha256

Direction = Mapping[str, Tensor]  # parameter name -> tensor shaped like it


def _axis(values: Any, name: str, centred: bool) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1 or len(a) < (3 if centred else 2) or not np.isfinite(a).all() or not (np.diff(a) > 0).all():
        raise UserError(f"{name} must be an increasing 1-D array of at least {3 if centred else 2} finite values, "
                        f"got {np.asarray(values).tolist()!r:.80}")
    if centred and not (a == 0.0).any():
        raise UserError(f"{name} must contain 0.0 exactly (w itself, where rho(0) and the sharpness are read)")
    return a


def _check(value: Any, name: str, ok: bool, accepted: str) -> None:
    if not ok:
        raise UserError(f"{name} must be {accepted}, got {value!r}")


def _specs(directions: Sequence[Any] | None, n: int, seed: int, normalize: str, include_bn: bool
           ) -> tuple[list[dict], dict[tuple[int, int], dict[str, Tensor]]]:
    """Specs for `n` directions: random ones (seed, k), or the given ones, each a spec mapping with a
    "kind" or a mapping of parameter names to tensors (kept in the results file)."""
    if directions is None:
        return random_specs(n, seed, normalize, include_bn), {}
    specs, stored = [], {}
    for k, d in enumerate(directions):
        if isinstance(d, Mapping) and "kind" in d:
            DIRECTIONS.lookup(str(d["kind"]))
            specs.append(dict(d))
        elif isinstance(d, Mapping) and d and all(isinstance(t, Tensor) for t in d.values()):
            specs.append({"kind": "tensors", "index": k})
            stored[(0, k)] = {name: t.detach().to("cpu", torch.float32) for name, t in d.items()}
        else:
            raise UserError(f"directions[{k}] must be a mapping of parameter names to tensors or a spec with a 'kind'; "
                            f"got {type(d).__name__}")
    return specs, stored


@contextlib.contextmanager
def _kept(model: nn.Module) -> Iterator[None]:
    """The model's device and per-module train/eval flags, restored on exit."""
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    flags = [m.training for m in model.modules()]
    try:
        yield
    finally:
        model.to(device)
        for m, t in zip(model.modules(), flags):
            m.training = t


def landscape_model(
    model: nn.Module,
    data: Any,
    grid: Grid,
    *,
    attack: AttackConfig | None = None,
    directions: Sequence[Any] | None = None,
    seed: int = 0,
    normalize: str = "filter",
    include_bn: bool = False,
    bn: str = "eval",
    bn_data: Any = None,
    fixed_adv: bool = False,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    radius: float | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = False,
    chunk: int | None = None,
    points_per_batch: int | str = "auto",
    kernels: Kernels | None = None,
) -> Landscape:
    """rho (and the natural loss, both accuracies, their standard errors) at every point of `grid` around
    the model's weights, with PGD on the fly at each (Alg. 1). `out`: flush a results file after every
    chunk and resume it if it exists with the same settings and weights. `points_per_batch`: weight
    points per vmapped pass (`landscape.core.points`; 1 = in place, one at a time). `kernels`: an
    `awp.kernels.Kernels` (precision under autocast; channels_last and compile prepare the model in place)."""
    if not isinstance(model, nn.Module):
        raise UserError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    attack = AttackConfig() if attack is None else attack
    _check(attack, "attack", isinstance(attack, AttackConfig), "an awp.attacks.AttackConfig")
    _check(seed, "seed", isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**63, "an int in [0, 2**63)")
    _check(batch_size, "batch_size", isinstance(batch_size, int) and batch_size >= 1, "an int >= 1")
    _check(chunk, "chunk", chunk is None or (isinstance(chunk, int) and chunk >= 1), "None or an int >= 1")
    points = parse_points(points_per_batch)
    kernels = Kernels() if kernels is None else kernels
    _check(kernels, "kernels", isinstance(kernels, Kernels), "None or an awp.kernels.Kernels")
    _check(normalize, "normalize", normalize in NORMALIZATIONS, f"one of {', '.join(NORMALIZATIONS)}")
    _check(bn, "bn", bn in engine.BN_MODES, f"one of {', '.join(engine.BN_MODES)}")
    check_size(1, grid.dims, grid.shape)
    specs, stored = _specs(directions, grid.n_directions, seed, normalize, include_bn)
    if len(specs) != grid.n_directions:
        raise UserError(f"directions has {len(specs)} entries; this grid needs {grid.n_directions}")
    dev = resolve_device(str(device))
    ident = CheckpointId("<memory>", None, weights_sha256(model.state_dict()), type(model).__name__)
    config = {"command": "api", "model": type(model).__name__, "directions": specs, "attack": asdict(attack),
              "seed": seed, "normalize": normalize, "include_bn": include_bn, "bn": bn, "batch_size": batch_size,
              "fixed_adv": fixed_adv, "dims": list(grid.dims), **kernels.decides(),
              "axes": {d: [float(a[0]), float(a[-1]), len(a)] for d, a in zip(grid.dims, grid.axes)}}
    if grid.kind == "curves":
        alphas = grid.axis("alpha")
        config["radius"] = sharp.default_radius(alphas) if radius is None else float(radius)
        sharp.check_radius(alphas, config["radius"])
    fresh = Landscape(grid, specs, [ident], config, stored=stored)

    def job(results: Landscape, device: torch.device) -> Job:
        batches = engine.fixed_batches(data, batch_size, attack, seed, device)
        bn_inputs = engine.clean_inputs(data if bn_data is None else bn_data, batch_size, device) if bn == "recalibrate" else []
        results.runtime["examples"] = sum(len(b.y) for b in batches)
        n = chunk or (len(grid.axis("alpha")) if grid.kind == "curves" else 4)  # about a direction per flush
        p = points_per_pass(points, device, batch_size)
        kernels.check(device)
        results.runtime.update(points_per_batch=p, kernels=kernels.record())
        build = lambda d: kernels.prepare(model.to(d).eval())
        return Job([build], batches, attack, bn, bn_inputs, fixed_adv, {}, n, points=p, kernels=kernels)

    path = Path(out) if out is not None else None
    with _kept(model):
        outcome = execute(lambda: Plan(path, fresh, job), device=str(dev), overwrite=overwrite, progress=progress)
    return outcome.results


def probe_model(model: nn.Module, data: Any, *, alphas: Any = np.linspace(-1, 1, 41), dirs: int = 10,
                **kwargs: Any) -> Landscape:
    """The 1-D landscape rho(w + alpha d_k) along `dirs` random filter-normalized directions (Figure 1,
    Appendix B.2): [checkpoint, direction, alpha]. `alphas` must contain 0. Takes every keyword of
    `landscape_model` (attack, directions, seed, normalize, include_bn, bn, bn_data, fixed_adv,
    batch_size, device, radius, out, overwrite, progress, chunk, points_per_batch, kernels)."""
    _check(dirs, "dirs", isinstance(dirs, int) and not isinstance(dirs, bool) and dirs >= 1, "an int >= 1")
    if kwargs.get("directions") is not None:
        dirs = len(kwargs["directions"])
    check_size(1, ("dirs", "alphas"), (dirs, len(np.atleast_1d(alphas))))  # before the axes are allocated
    return landscape_model(model, data, Grid.curves(_axis(alphas, "alphas", centred=True), dirs), **kwargs)


def plane_model(model: nn.Module, data: Any, *, alphas: Any = np.linspace(-1, 1, 21), betas: Any = np.linspace(-1, 1, 21),
                **kwargs: Any) -> Landscape:
    """The 2-D landscape g(w + alpha d + beta e) (Appendix B.2, Figure 6): [checkpoint, alpha, beta];
    d, e are `probe_model`'s random directions 0 and 1 for the same seed, or two given ones."""
    return landscape_model(model, data, Grid.plane(_axis(alphas, "alphas", False), _axis(betas, "betas", False)), **kwargs)


def sharpness_model(
    model: nn.Module,
    data: Any,
    *,
    measures: str | Sequence[str] | None = None,
    attack: AttackConfig | None = None,
    params: str | Sequence[str] | None = None,
    per_layer: bool = False,
    include_bn: bool = False,
    bn: str = "eval",
    bn_data: Any = None,
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device = "auto",
    kernels: Kernels | None = None,
    progress: bool = False,
    **measure_params: Any,
):
    """The menu of robust sharpness measures (`landscape.core.measures.MEASURES`: rise, curvature, Stutz
    flatness, adaptive, PAC-Bayes, Hessian trace and top eigenvalue) of the model at its weights, PGD
    re-run at every weight point; over every parameter, those matching `params` globs, or each block
    (`per_layer`). `measure_params`: any of `MEASURE_PARAMS` (xi_worst=0.01, trace_probes=100, ...).
    Returns a `landscape.storage.measures.MeasureResults` (`.get(name, scope)`, `.save(path)`)."""
    from landscape.commands.sharpness import measure_pending, resolve_scopes
    from landscape.core import measures as M
    from landscape.storage.measures import MeasureResults

    if not isinstance(model, nn.Module):
        raise UserError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    attack = AttackConfig() if attack is None else attack
    _check(attack, "attack", isinstance(attack, AttackConfig), "an awp.attacks.AttackConfig")
    _check(batch_size, "batch_size", isinstance(batch_size, int) and batch_size >= 1, "an int >= 1")
    _check(bn, "bn", bn in engine.BN_MODES, f"one of {', '.join(engine.BN_MODES)}")
    names = M.parse_measures(",".join(measures) if isinstance(measures, (list, tuple)) else measures)
    values = M.resolve_params(measure_params)
    kernels = Kernels() if kernels is None else kernels
    globs = ",".join(params) if isinstance(params, (list, tuple)) else params
    scopes = resolve_scopes({n: p.shape for n, p in model.named_parameters()}, globs, per_layer, include_bn)
    ident = CheckpointId("<memory>", None, weights_sha256(model.state_dict()), type(model).__name__)
    config = {"command": "api", "measures": list(names), "attack": asdict(attack), "seed": seed, "bn": bn,
              "batch_size": batch_size, "scopes": scopes, **kernels.decides()}
    results = MeasureResults([ident], list(names), scopes, config)
    dev = resolve_device(str(device))
    with _kept(model):
        batches = engine.fixed_batches(data, batch_size, attack, seed, dev)
        bn_inputs = engine.clean_inputs(data if bn_data is None else bn_data, batch_size, dev) if bn == "recalibrate" else []
        kernels.check(dev)
        measure_pending(results, [lambda d: model.to(d).eval()], batches, attack, dev, values, seed, bn=bn,
                        bn_inputs=bn_inputs, kernels=kernels, progress=progress)
    return results
