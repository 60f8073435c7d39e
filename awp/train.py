"""The training loop: a registered method, with or without AWP (Algorithm 2), per-epoch metrics, one atomic run-file commit per epoch.

Every epoch's randomness (shuffle order, PGD random starts, evaluation starts, augmentation) comes from
generators seeded by (seed, epoch, stream), so a run resumed from its last finished epoch computes
bitwise what an uninterrupted run computes (on CPU).
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from awp import distributed
from awp.attacks import AttackConfig
from awp.config import resolve_device
from awp.data import dataset_info
from awp.errors import Interrupted, UserError
from awp.evaluate import EvalSums, evaluate, evaluate_sums, exact_count
from awp.kernels import Kernels
from awp.methods import Method, get_method
from awp.models import create_model
from awp.perturb import AWPConfig, Params, find_perturbation, frozen_batchnorm, perturbable_params, perturbed, zeros_like_params
from awp.rundata import RunData, run_data, take, training_batches
from awp.schedules import ScheduleSpec, learning_rate
from awp.safeio import check_output, exclusive, hdf5_format
from awp.stopping import graceful_stop, stop_requested
from awp.store import FORMAT, ResumeState, RunReader, commit_epoch, create_run, open_run, remove_stale_tmp, set_status
from awp.trainconfig import TrainConfig, clean_pass, config_diff, to_flat, validate


class NonFiniteLoss(UserError):
    """The training loss became NaN or inf; the run file keeps the last good epoch."""


# Independent random streams of one epoch.
SHUFFLE, ATTACK, EVAL_TRAIN, EVAL_TEST, EVAL_VAL, GLOBAL = range(6)


def epoch_seed(seed: int, epoch: int, stream: int) -> int:
    """A seed for (run seed, epoch, stream), well mixed so neighbouring epochs are unrelated."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0])


def epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(epoch_seed(seed, epoch, stream))


# ---------------------------------------------------------------------------------------------
# One step, one epoch
# ---------------------------------------------------------------------------------------------


@dataclass
class StepResult:
    """Sums over one batch: mean loss * n, natural / adversarial correct counts, batch size."""

    loss_sum: float
    nat_correct: int
    adv_correct: int
    n: int

    def add(self, other: "StepResult") -> "StepResult":
        return StepResult(
            self.loss_sum + other.loss_sum, self.nat_correct + other.nat_correct,
            self.adv_correct + other.adv_correct, self.n + other.n,
        )


def train_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    method: Method,
    x: Tensor,
    y: Tensor,
    attack: AttackConfig,
    generator: torch.Generator | None,
    awp: AWPConfig | None = None,
    awp_params: Params | None = None,
    bn_clean: str = "reference",
    method_params: Mapping[str, Any] | None = None,
    fit: nn.Module | None = None,
    reduce_grads: Callable[[list[Tensor]], list[Tensor]] | None = None,
    kernels: Kernels = Kernels(),
    scaler: torch.amp.GradScaler | None = None,
) -> StepResult:
    """One SGD step of `method` with its parameters `method_params` (defaults for those not given) on
    (x [B, C, H, W], y [B]); with `awp`, Algorithm 2 lines 4-15.

    The model is in train mode; attacks run in train mode like the reference AT code, so BatchNorm
    running statistics follow the K1 PGD batches and the training batch x'. `bn_clean` (`CLEAN_PASSES`)
    says where the natural accuracy is measured: "reference", a train-mode forward on x after the step,
    at the new weights, whose batch statistics enter the running ones (the reference's "Train Acc"
    pass); "frozen", at w before the step with the running statistics restored afterwards.
    `fit` is the module the training loss's forward runs through (a DistributedDataParallel wrapper of
    `model`, whose backward averages gradients over ranks); attacks and the AWP ascent use `model`, and
    `reduce_grads` turns a rank's AWP ascent gradient into the global batch's (`find_perturbation`).
    `kernels.precision`: the attacks', the losses' and the natural pass's forwards run under its autocast
    (the AWP ascent's loss too, its gradient outside); an enabled `scaler` (fp16) scales the training
    loss's backward and steps through `scaler.step`, which skips a step whose gradients overflowed.
    """
    fit = model if fit is None else fit
    cp = clean_pass(bn_clean)
    bound = method.bind(method_params or {})  # the method's adversary and loss with the run's parameters
    loss_fn = bound.loss
    amp = functools.partial(kernels.autocast, x.device)  # a fresh region per use; a no-op for fp32
    scaled = scaler is not None and scaler.is_enabled()
    nat_correct = 0 if cp.after_step else _natural_correct(model, x, y, cp.updates_bn, amp)
    if awp is None:
        with amp():
            x_adv = bound.adversary(model, x, y, attack, generator)  # Eq. 9 / 16 / 17 at w
            out = loss_fn(fit, x, x_adv, y)
        opt.zero_grad(set_to_none=True)
        (scaler.scale(out.loss) if scaled else out.loss).backward()
    else:
        params = awp_params if awp_params is not None else perturbable_params(model, awp.include_1d)
        with perturbed(params) as w:  # on exit: back at w exactly (Eq. 11's "- v")
            v = zeros_like_params(params)  # Algorithm 2: v starts at 0 each step

            def ascent_loss() -> Tensor:  # the forward under autocast; find_perturbation's gradient outside
                with amp():
                    return loss_fn(model, x, x_adv, y).loss

            for _ in range(awp.alternations):  # line 4: A alternations
                with amp():
                    x_adv = bound.adversary(model, x, y, attack, generator)  # lines 5-10, Eq. 9 / 16 / 17 against w + v
                v = find_perturbation(  # lines 11-13, Eq. 10 with Pi_gamma of Eq. 15
                    model, params, w, v, ascent_loss, awp, reduce_grads=reduce_grads
                )
            with amp():
                out = loss_fn(fit, x, x_adv, y)  # line 15: the loss at w + v ...
            opt.zero_grad(set_to_none=True)
            (scaler.scale(out.loss) if scaled else out.loss).backward()  # ... and its gradient, taken at w + v
    # Eq. 11: w <- (w + v) - eta3 * grad - v = w - eta3 * grad, applied at the exactly restored w. (The
    # reference steps at w + v and then subtracts v; with weight decay the two differ by eta3 * wd * v.)
    if scaled:
        scaler.step(opt)  # unscales the gradients first; skipped when they hold inf/NaN
        scaler.update()
    else:
        opt.step()
    if cp.after_step:
        nat_correct = _natural_correct(model, x, y, cp.updates_bn, amp)
    loss = float(out.loss.detach())
    adv_correct = int((out.logits_adv.detach().argmax(1) == y).sum())  # on the training attack's x' (at w + v under AWP)
    return StepResult(loss * len(y), nat_correct, adv_correct, len(y))


def _natural_correct(model: nn.Module, x: Tensor, y: Tensor, updates_bn: bool,
                     amp: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> int:
    """Correct predictions on the clean batch in the model's (train) mode, the forward inside `amp()`;
    unless `updates_bn`, BatchNorm running statistics are left as they were."""
    with torch.no_grad(), (contextlib.nullcontext() if updates_bn else frozen_batchnorm(model)), amp():
        return int((model(x).argmax(1) == y).sum())


class StepObserver(Protocol):
    def __call__(self, step: int, steps: int, loss: float) -> None: ...


@dataclass
class EpochResult:
    """Running means over the epoch's minibatches, in train mode, as the weights moved (the paper's
    "training robustness" is `fit_adv_acc`: accuracy on the training attack's x', at w + v under AWP)."""

    lr: float
    fit_loss: float
    fit_nat_acc: float  # on the clean batches, per `bn_clean`
    fit_adv_acc: float  # on the training attack's examples (K1 steps, train mode)
    awp_on: bool
    seconds: float
    bad_step: int | None = None  # first step whose loss was NaN/inf
    stopped: bool = False  # Ctrl-C: the epoch was abandoned after a complete step


def awp_active(cfg: TrainConfig, epoch: int) -> bool:
    """AWP runs when the config switches it on, after `awp_warmup` epochs, and not at all when gamma = 0
    (then the run is its method without AWP, bit for bit)."""
    return cfg.use_awp and cfg.awp.gamma > 0 and epoch > cfg.awp_warmup


def train_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    cfg: TrainConfig,
    data: RunData,
    epoch: int,
    device: torch.device,
    on_step: StepObserver | None = None,
    dp: distributed.DataParallel | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> EpochResult:
    """One epoch (1-based) over `data.train`; lr from the schedule at every step; stops at a NaN/inf loss.

    Data-parallel (`dp`): every rank draws the same global batches (`batch_size` is the global batch) and
    trains on its slice of each, every world-th example (`DataParallel.shard`), so each step sees the
    examples a single process sees; PGD and the AWP ascent run per rank on the bare `model` with the
    rank's own random starts, the ascent gradient and the training gradient are summed over ranks
    weighted by shard size, and the step's sums and the Ctrl-C flag are added over ranks (one small
    collective per step), so every rank stops at the same step.

    `cfg.kernels` sets how forwards run (precision, channels_last batches); `scaler` is the run's
    GradScaler, whose scale carries over epochs (None: a fresh one for this epoch, enabled for fp16)."""
    method = get_method(cfg.method)
    kernels = cfg.kernels
    scaler = kernels.scaler(device) if scaler is None else scaler
    # The same on every rank: the global batch order and its augmentation, as a single process draws them.
    torch.manual_seed(epoch_seed(cfg.seed, epoch, GLOBAL))  # augmentation and anything else global
    shuffle = epoch_generator(cfg.seed, epoch, SHUFFLE)
    attack_gen = epoch_generator(cfg.seed, epoch, ATTACK)
    if dp is not None:  # each rank its own random starts for its own examples
        attack_gen = torch.Generator().manual_seed(distributed.rank_seed(epoch_seed(cfg.seed, epoch, ATTACK), dp.ctx.rank))
    use_awp = awp_active(cfg, epoch)
    params = perturbable_params(model, cfg.awp.include_1d) if use_awp else None
    spec = ScheduleSpec(cfg.lr, cfg.epochs, cfg.lr_milestones)
    steps = data.steps(cfg.batch_size)
    model.train()
    t0 = time.perf_counter()
    total = StepResult(0.0, 0, 0, 0)
    first_lr = None
    for it, (x, y) in enumerate(training_batches(data, cfg.batch_size, generator=shuffle, device=device)):
        lr = learning_rate(cfg.lr_schedule, spec, epoch, it, steps)
        first_lr = lr if first_lr is None else first_lr
        for group in opt.param_groups:
            group["lr"] = lr
        xs, ys = (x, y) if dp is None else dp.shard(x, y)
        r = train_step(model, opt, method, kernels.inputs(xs), ys, cfg.attack, attack_gen, cfg.awp if use_awp else None,
                       params, bn_clean=cfg.bn_clean, method_params=cfg.method_params, fit=None if dp is None else dp.fit,
                       reduce_grads=None if dp is None else dp.reduce_grads,  # find_perturbation: the global batch's v
                       kernels=kernels, scaler=scaler)
        stop = False
        if dp is not None:
            loss_sum, nat, adv, n, stops = distributed.all_sum(dp.ctx, [r.loss_sum, r.nat_correct, r.adv_correct, r.n, stop_requested()])
            r, stop = StepResult(loss_sum, int(nat), int(adv), int(n)), stops > 0
        if not math.isfinite(r.loss_sum):
            return EpochResult(lr, math.nan, math.nan, math.nan, use_awp, time.perf_counter() - t0, bad_step=it + 1)
        total = total.add(r)
        if on_step is not None:
            on_step(it + 1, steps, r.loss_sum / r.n)
        if stop or (dp is None and stop_requested()):
            return EpochResult(lr, math.nan, math.nan, math.nan, use_awp, time.perf_counter() - t0, stopped=True)
    n = max(total.n, 1)
    return EpochResult(
        lr=first_lr if first_lr is not None else cfg.lr,
        fit_loss=total.loss_sum / n,
        fit_nat_acc=total.nat_correct / n,
        fit_adv_acc=total.adv_correct / n,
        awp_on=use_awp,
        seconds=time.perf_counter() - t0,
    )


EVAL_KEYS = ("nat_loss", "nat_acc", "adv_loss", "adv_acc")  # what `evaluate` returns per set


def evaluated(cfg: TrainConfig, epoch: int) -> bool:
    """Whether epoch `epoch` measures train/test robustness: every `eval_every`-th epoch and the last."""
    return epoch % cfg.eval_every == 0 or epoch == cfg.epochs


def evaluate_epoch(model: nn.Module, cfg: TrainConfig, data: RunData, epoch: int, device: torch.device,
                   ctx: distributed.DistContext | None = None, best_val: float = -math.inf) -> dict[str, float]:
    """Natural and PGD (`eval_steps`) loss/accuracy in eval mode at w on the fixed unaugmented training
    subset (`train_eval_size`), the test set and the validation split; gap = train robust - test robust
    accuracy (same attack, same mode). The paper's training robustness is `fit_adv_acc` instead. Train
    and test are measured only on `evaluated` epochs (NaN otherwise) and on an epoch whose validation
    robust accuracy beats `best_val`, the best before it (so AT-ES's early-stopped epoch always has
    them); the validation split every epoch.

    Under torchrun (`ctx`) each rank attacks every world-th example with its own random starts and the
    sums and counts are added over ranks: the same examples and attack, other random starts than one
    process would draw. Forwards and attacks run under the run's precision (`cfg.kernels`)."""
    attack = cfg.eval_attack
    row: dict[str, float] = {}

    def measure(name: str, ds, stream: int) -> None:
        seed = epoch_seed(cfg.seed, epoch, stream)
        if ctx is None or not ctx.distributed:
            with cfg.kernels.autocast(device):
                r = evaluate(model, ds, attack, batch_size=cfg.eval_batch_size, device=device, seed=seed)
        else:
            mine = take(ds, np.arange(ctx.rank, len(ds), ctx.world))
            with cfg.kernels.autocast(device):
                sums = evaluate_sums(model, mine, attack, batch_size=cfg.eval_batch_size, device=device,
                                     seed=distributed.rank_seed(seed, ctx.rank))
            n, nat, nat_c, adv, adv_c = distributed.all_sum(ctx, sums.astuple())  # exact: sums and counts
            r = EvalSums(int(n), nat, exact_count(nat_c), adv, exact_count(adv_c)).reduce()
        row.update({f"{name}_{k}": v for k, v in r.items()})

    if data.val is not None:  # every epoch: model selection (AT-ES) needs it
        measure("val", data.val, EVAL_VAL)
    if evaluated(cfg, epoch) or row.get("val_adv_acc", -math.inf) > best_val:
        measure("train", data.train_eval, EVAL_TRAIN)
        measure("test", data.test, EVAL_TEST)
    else:
        row.update({f"{name}_{k}": math.nan for name in ("train", "test") for k in EVAL_KEYS})
    row["gap"] = row["train_adv_acc"] - row["test_adv_acc"]
    return row


# ---------------------------------------------------------------------------------------------
# Optimizer and RNG state, by parameter name (never by position)
# ---------------------------------------------------------------------------------------------


def optimizer_state(model: nn.Module, opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], list[dict[str, Any]]]:
    """Optimizer buffers as {'optimizer/<param name>/<buffer>': tensor} and param groups as JSON."""
    names = [n for n, _ in model.named_parameters()]
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            t = val if isinstance(val, Tensor) else torch.tensor(val)
            tensors[f"optimizer/{names[idx]}/{key}"] = t
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [names[i] for i in g["params"]]} for g in sd["param_groups"]]
    return tensors, groups


def load_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer, tensors: Mapping[str, Tensor], groups: list[dict[str, Any]]) -> None:
    index = {n: i for i, (n, _) in enumerate(model.named_parameters())}
    state: dict[int, dict[str, Tensor]] = {}
    for key, t in tensors.items():
        if not key.startswith("optimizer/"):
            continue
        name, buf = key[len("optimizer/") :].rsplit("/", 1)
        state.setdefault(index[name], {})[buf] = t
    param_groups = [{**g, "params": [index[n] for n in g["params"]]} for g in groups]
    opt.load_state_dict({"state": state, "param_groups": param_groups})


def resume_state(model: nn.Module, opt: torch.optim.Optimizer, cfg: TrainConfig, epoch: int,
                 scaler: torch.amp.GradScaler | None = None) -> ResumeState:
    tensors, groups = optimizer_state(model, opt)
    tensors["rng/torch"] = torch.get_rng_state()
    state = {
        "optimizer": {"type": type(opt).__name__, "param_groups": groups},
        "schedule": {"name": cfg.lr_schedule, "lr": cfg.lr, "epochs": cfg.epochs, "milestones": list(cfg.lr_milestones), "stateless": True},
        "rng": {"scheme": "torch.Generator seeded by numpy SeedSequence([seed, epoch, stream])", "seed": cfg.seed},
    }
    if scaler is not None and scaler.is_enabled():  # fp16: the loss scale and its growth tracker, plain numbers
        state["grad_scaler"] = {k: (v.item() if isinstance(v, Tensor) else v) for k, v in scaler.state_dict().items()}
    return ResumeState(epoch, tensors, state)


# ---------------------------------------------------------------------------------------------
# A whole run
# ---------------------------------------------------------------------------------------------


class Reporter(Protocol):
    """Where progress goes (a rich bar, plain lines, or nowhere)."""

    def message(self, text: str) -> None: ...
    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None: ...
    def step(self, step: int, steps: int, loss: float) -> None: ...
    def epoch_end(self, epoch: int, epochs: int, row: Mapping[str, float], best_epoch: int | None) -> None: ...
    def close(self) -> None: ...


class SilentReporter:
    def message(self, text: str) -> None: ...
    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None: ...
    def step(self, step: int, steps: int, loss: float) -> None: ...
    def epoch_end(self, epoch: int, epochs: int, row: Mapping[str, float], best_epoch: int | None) -> None: ...
    def close(self) -> None: ...


@dataclass
class RunResult:
    path: Path
    metrics: dict[str, np.ndarray] = field(default_factory=dict)
    best_epoch: int | None = None
    best_val_epoch: int | None = None
    last_epoch: int | None = None


def build_model(cfg: TrainConfig, data: RunData) -> tuple[nn.Module, dict[str, Any]]:
    """The registry model, initialized from `cfg.seed`, and the plain values that rebuild it."""
    info = data.info
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.arch, info.num_classes, info.in_channels, info.mean, info.std, **cfg.arch_kwargs)
    meta = {
        "arch": cfg.arch, "arch_kwargs": dict(cfg.arch_kwargs), "dataset": cfg.dataset,
        "num_classes": info.num_classes, "in_channels": info.in_channels,
        "mean": list(info.mean), "std": list(info.std), "image_size": info.image_size,
    }
    return model, meta


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum and weight decay on every parameter (Section 5.1)."""
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def train(
    cfg: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    reporter: Reporter | None = None,
) -> RunResult:
    """Train per `cfg`, committing every finished epoch to the run file `out`.

    A new run refuses to replace an existing file unless `overwrite`; `resume` continues from the
    last finished epoch (a missing file starts a new run) and refuses a config that differs.

    Under torchrun every rank calls this (`landscape train-awp --workers N` starts them) and they train
    data-parallel (`train_epoch`); rank 0 alone checks, holds and writes `out`, and reports.
    """
    out = Path(out)
    rep = reporter or SilentReporter()
    if not distributed.launched_by_torchrun():
        device = preflight(cfg, out, resume=resume, overwrite=overwrite)
        with exclusive(out), graceful_stop():
            return _train(cfg, out, resume=resume, overwrite=overwrite, rep=rep, device=device)
    ctx = distributed.init(cfg.device)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(graceful_stop())
            distributed.on_main(ctx, lambda: (preflight(cfg, out, resume=resume, overwrite=overwrite),
                                              stack.enter_context(exclusive(out))))
            return _train(cfg, out, resume=resume, overwrite=overwrite, rep=rep if ctx.is_main else SilentReporter(),
                          device=ctx.device, ctx=ctx)
    finally:
        distributed.shutdown(ctx)


def preflight(cfg: TrainConfig, out: str | Path, *, resume: bool = False, overwrite: bool = False, workers: int = 1) -> torch.device:
    """Every check that needs neither data nor compute: the run file, the config's values (a config
    built by hand skips resolve_config's), the device, and that the model can be built and fits in
    memory (built on the meta device: no memory, no random numbers). With `workers` > 1 ranks, also
    that every training batch has an example for each (this loads the data)."""
    check_run_output(Path(out), resume=resume, overwrite=overwrite)
    validate(cfg)
    device = resolve_device(cfg.device)
    cfg.kernels.check(device)  # a precision torch cannot run here: one line, before any compute
    info = dataset_info(cfg.dataset)
    with torch.device("meta"):
        skeleton = create_model(cfg.arch, info.num_classes, info.in_channels, info.mean, info.std, **cfg.arch_kwargs)
    get_method(cfg.method).checked(cfg, info)  # the method's own inputs (RST: the unlabelled set, the labeler)
    if resume and Path(out).exists():
        reader = check_resumable(cfg, Path(out))
        if reader.last_epoch is not None:
            reader.load_into(skeleton, reader.last_epoch)  # the stored weights fit the model
    if workers > 1:
        data = run_data(cfg.dataset, cfg.data_dir, train_size=cfg.train_size, train_eval_size=cfg.train_eval_size,
                        val_split=cfg.val_split, test_size=cfg.test_size)
        distributed.check_shards(len(data.train), data.labeled_per_batch(cfg.batch_size), workers)
    return device


def check_resumable(cfg: TrainConfig, out: Path) -> RunReader:
    """The run at `out` was made with `cfg` (runtime options aside): else one line naming the differences."""
    reader = open_run(out)
    stored_cfg = reader.train_config()
    diff = config_diff(stored_cfg, cfg)
    if diff:
        stored = to_flat(stored_cfg)
        new = to_flat(cfg)
        detail = ", ".join(f"{k} (run: {stored[k]!r}, now: {new[k]!r})" for k in diff)
        raise UserError(f"cannot resume {str(out)!r}: the config differs in {detail}")
    return reader


def check_run_output(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Before anything is computed: `out` may become (or continue as) a run file."""
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other; pass one")
    if not resume and not overwrite and out.exists() and hdf5_format(out) == FORMAT:
        raise UserError(f"{str(out)!r} already exists; pass --resume to continue it or --overwrite to start over")
    check_output(out, "--out", overwrite=overwrite, writes="run", resumes=FORMAT if resume else None)


def _train(cfg: TrainConfig, out: Path, *, resume: bool, overwrite: bool, rep: Reporter, device: torch.device,
           ctx: distributed.DistContext | None = None) -> RunResult:
    """`train` once `out` is held by this process (under torchrun: by rank 0, the one that writes it;
    every rank loads a resumed run's last epoch, optimizer and RNG state from it)."""
    ctx = ctx if ctx is not None else distributed.DistContext(device=device)
    main = ctx.is_main
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if main:
        remove_stale_tmp(out)
    data = run_data(
        cfg.dataset, cfg.data_dir, train_size=cfg.train_size, train_eval_size=cfg.train_eval_size,
        val_split=cfg.val_split, test_size=cfg.test_size,
    )
    method = get_method(cfg.method)
    if method.prepare is not None:  # RST: a labeler (trained here unless given) pseudo-labels the unlabelled set
        rep.message(f"{cfg.method}: preparing the training data before epoch 1 (RST: pseudo-labelling)")
        data = method.prepared(cfg, data, device)
    distributed.check_shards(len(data.train), data.labeled_per_batch(cfg.batch_size), ctx.world)  # as preflight, with the data used
    model, meta = build_model(cfg, data)
    model.to(device)
    cfg.kernels.prepare(model)  # in place: channels_last weights, compiled forward; names unchanged
    opt = make_optimizer(model, cfg)
    scaler = cfg.kernels.scaler(device)  # fp16 only; its scale carries over epochs and is saved for --resume
    start, best_val = 1, -math.inf  # best_val: the best validation robust accuracy so far
    if distributed.broadcast_flag(ctx, out.exists() and resume):  # rank 0's view, before it writes anything
        reader = check_resumable(cfg, out)
        if reader.last_epoch is not None:
            reader.load_into(model, reader.last_epoch)  # strictly: a run that does not fit is one line
            st = reader.resume_state()
            if st is not None:
                load_optimizer_state(model, opt, st.tensors, st.state["optimizer"]["param_groups"])
                if "rng/torch" in st.tensors:
                    torch.set_rng_state(st.tensors["rng/torch"])
                if scaler.is_enabled() and "grad_scaler" in st.state:
                    scaler.load_state_dict(st.state["grad_scaler"])
            start = reader.last_epoch + 1
            val = reader.metrics().get("val_adv_acc", np.zeros(0))
            best_val = float(np.nanmax(val)) if np.isfinite(val).any() else -math.inf
            rep.message(f"resuming {out} after epoch {reader.last_epoch}")
    else:

        def create() -> None:
            if out.exists() and not overwrite:
                raise UserError(f"{str(out)!r} already exists; pass --resume to continue it or --overwrite to start over")
            if resume:
                rep.message(f"no run at {out}; starting a new one")
            create_run(out, cfg.to_dict(), meta)

        distributed.on_main(ctx, create)

    # Data-parallel: DDP's backward sums the shard-weighted gradients, the global batch's mean (its
    # constructor broadcasts rank 0's weights); BatchNorm normalizes with each rank's own shard in train
    # mode, as plain BatchNorm under DDP does; its running statistics are averaged before each evaluation.
    dp = distributed.data_parallel(model, ctx) if ctx.distributed else None
    steps = data.steps(cfg.batch_size)
    try:
        for epoch in range(start, cfg.epochs + 1):
            rep.epoch_start(epoch, cfg.epochs, steps)
            ep = train_epoch(model, opt, cfg, data, epoch, device, on_step=rep.step, dp=dp, scaler=scaler)
            if ep.stopped:
                kept = f"epochs 1-{epoch - 1}" if epoch > 1 else "no finished epoch"
                distributed.on_main(ctx, lambda: set_status(out, f"interrupted during epoch {epoch}"))
                raise Interrupted(f"stopped during epoch {epoch}; {str(out)!r} keeps {kept}")
            if ep.bad_step is not None:
                kept = f"epochs up to {epoch - 1}" if epoch > 1 else "no epochs"
                distributed.on_main(ctx, lambda: set_status(out, f"stopped: non-finite loss at epoch {epoch}, step {ep.bad_step}"))
                raise NonFiniteLoss(
                    f"training loss became NaN/inf at epoch {epoch}, step {ep.bad_step}; stopped, {str(out)!r} keeps "
                    f"{kept} (try a smaller --lr or --gamma)"
                )
            t0 = time.perf_counter()
            row: dict[str, float] = {
                "lr": ep.lr, "fit_loss": ep.fit_loss, "fit_nat_acc": ep.fit_nat_acc, "fit_adv_acc": ep.fit_adv_acc,
                "awp_on": float(ep.awp_on),
            }
            distributed.average_batchnorm_stats(ctx, model)  # every rank evaluates (and rank 0 saves) the same model
            row.update(evaluate_epoch(model, cfg, data, epoch, device, ctx, best_val))
            best_val = max(best_val, row.get("val_adv_acc", -math.inf))
            row["time_train"] = ep.seconds
            row["time_eval"] = time.perf_counter() - t0

            def commit() -> None:  # rank 0; the others wait for it (and stop if it could not write)
                commit_epoch(out, epoch, row, model.state_dict(), resume_state(model, opt, cfg, epoch, scaler),
                             save_every=cfg.save_every)
                rep.epoch_end(epoch, cfg.epochs, row, open_run(out).best_epoch)

            distributed.on_main(ctx, commit)

        def finish() -> None:
            if open_run(out).status != "finished":
                set_status(out, "finished")

        distributed.on_main(ctx, finish)
    finally:
        rep.close()
    if not main:
        return RunResult(out)
    reader = open_run(out)
    return RunResult(out, reader.metrics(), reader.best_epoch, reader.best_val_epoch, reader.last_epoch)
