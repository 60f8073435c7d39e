"""RST (Carmon et al. 2019), robust self-training: a natural model labels an unlabelled image set, and
every training batch mixes labelled with pseudo-labelled examples at a fixed fraction, trained on a
robust loss (TRADES by default; Eq. 4). With AWP the weight ascent climbs that loss (Appendix D.3).

Eq. 4 is rho_labeled + lambda * rho_unlabeled; a batch whose fraction f is pseudo-labelled has the mean
loss (1 - f) rho_labeled + f rho_unlabeled, i.e. lambda = f / (1 - f) (1 at Carmon et al.'s f = 0.5).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from awp.attacks import AttackConfig
from awp.errors import UserError
from awp.losses import LossOutput
from awp.methods.trades import AWP_DEFAULTS
from awp.methods.base import METHODS, Bound, Method, Param, choice, integer, number, register_method, text

# The robust losses RST can train with: registered methods whose first parameter (if any) is the weight.
ROBUST_LOSSES = ("trades", "mart", "at")


def _base(loss: str, beta: float) -> Bound:
    """The robust method `loss` bound with `beta` as its regularizer weight (TRADES' beta, MART's lambda)."""
    method = METHODS[loss]
    return method.bind({method.params[0].name: beta} if method.params else {})


def rst_adversary(model: nn.Module, x: Tensor, y: Tensor, attack: AttackConfig, generator: torch.Generator | None,
                  *, loss: str, beta: float) -> Tensor:
    """x' by the robust loss's own attack (TRADES: Eq. 16), on labelled and pseudo-labelled rows alike."""
    return _base(loss, beta).adversary(model, x, y, attack, generator)


def rst_loss(model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, *, loss: str, beta: float) -> LossOutput:
    """Eq. 4 on a mixed batch: the robust loss's batch mean over labelled and pseudo-labelled rows."""
    return _base(loss, beta).loss(model, x, x_adv, y)


def check_rst(cfg: Any, info: Any, *, unlabeled: str, labeler: str) -> None:
    """Before anything runs: the unlabelled set exists with the run's [C, H, W] (from file headers), and a
    given labeler is a file."""
    from awp.data.files import image_shape

    if unlabeled != "rest":
        shape, want = image_shape(unlabeled), tuple(info.input_shape)
        if shape != want:
            raise UserError(f"--rst-unlabeled {unlabeled}: images are {list(shape)} but the run's are {list(want)} ([C, H, W])")
    if labeler and not Path(labeler).is_file():
        raise UserError(f"--rst-labeler {labeler!r} is not a file; give a run file (.h5) or a .pt state dict, or '' to train one")


def unlabeled_images(spec: str, data: Any) -> Tensor:
    """The unlabelled set: "rest" (the training-split images this run neither trains nor validates on),
    or npz:PATH / folder:PATH; its images must have the run's [C, H, W]."""
    from awp.data.files import load_images

    if spec == "rest":
        if data.rest is None or len(data.rest) == 0:
            raise UserError("--rst-unlabeled rest: this run uses every training image (set --train-size below the "
                            "training set, or give npz:PATH or folder:PATH)")
        x = torch.stack([data.rest[i][0] for i in range(len(data.rest))])
    else:
        x = load_images(spec)
    want = tuple(data.info.input_shape)
    if tuple(x.shape[1:]) != want:
        raise UserError(f"--rst-unlabeled {spec}: images are {list(x.shape[1:])} but the run's are {list(want)} ([C, H, W])")
    return x


def natural_labeler(cfg: Any, data: Any, device: torch.device, epochs: int) -> nn.Module:
    """A natural model trained here on the run's labelled set: `epochs` epochs of `natural` with the run's
    model, optimizer, schedule and seed (Carmon et al. train it as a standard classifier)."""
    from awp.train import build_model, make_optimizer, train_epoch

    ncfg = replace(cfg, method="natural", method_params={}, use_awp=False, epochs=epochs)
    model, _ = build_model(ncfg, data)
    model.to(device)
    opt = make_optimizer(model, ncfg)
    for epoch in range(1, epochs + 1):
        ep = train_epoch(model, opt, ncfg, data, epoch, device)
        if ep.bad_step is not None or ep.stopped:
            raise UserError(f"the RST labeler's natural training stopped at epoch {epoch} (non-finite loss or Ctrl-C)")
    return model


def given_labeler(path: str, cfg: Any, data: Any, device: torch.device) -> nn.Module:
    """A labeler from a run file (its last epoch) or a .pt state dict of the run's --arch."""
    from awp.models import create_model
    from awp.models.loading import load_weights
    from awp.safeio import hdf5_format
    from awp.store import FORMAT, open_run

    p = Path(path)
    if not p.is_file():
        raise UserError(f"--rst-labeler {path!r} is not a file; give a run file (.h5) or a .pt state dict, or '' to train one")
    if hdf5_format(p) == FORMAT:
        reader = open_run(p)
        if reader.last_epoch is None:
            raise UserError(f"--rst-labeler {path!r} has no finished epoch")
        return reader.build_model(reader.last_epoch, device)
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserError(f"--rst-labeler {path!r} is neither a run file nor a readable .pt state dict ({type(e).__name__})") from None
    sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    if not isinstance(sd, dict):
        raise UserError(f"--rst-labeler {path!r} holds no state dict")
    info = data.info
    model = create_model(cfg.arch, info.num_classes, info.in_channels, info.mean, info.std, **cfg.arch_kwargs)
    load_weights(model, sd, p, cfg.arch)
    return model.to(device)


@torch.no_grad()
def pseudo_labels(model: nn.Module, x: Tensor, device: torch.device, batch_size: int = 512) -> Tensor:
    """argmax_k f(x)_k of the labeler in eval mode, [N] int64 on the CPU."""
    was = model.training
    model.eval()
    out = [model(x[i : i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)]
    model.train(was)
    return torch.cat(out)


def prepare_rst(cfg: Any, data: Any, device: torch.device, *, unlabeled: str, fraction: float, labeler: str,
                labeler_epochs: int) -> Any:
    """Label the unlabelled set with the labeler and attach it to the run's data at `fraction` per batch."""
    x_u = unlabeled_images(unlabeled, data)
    model = given_labeler(labeler, cfg, data, device) if labeler else natural_labeler(cfg, data, device, labeler_epochs or cfg.epochs)
    return replace(data, unlabeled=TensorDataset(x_u, pseudo_labels(model, x_u, device)), unlabeled_fraction=fraction)


RST = register_method(Method(
    "rst", rst_adversary, rst_loss, prepare=prepare_rst, check=check_rst, defaults=AWP_DEFAULTS,  # RST-AWP "just like TRADES-AWP" (D.3)
    summary="robust self-training on pseudo-labelled extra data, TRADES loss (Carmon et al., Eq. 4)",
    params=(
        Param("unlabeled", "rest", text, "rest, npz:PATH or folder:PATH",
              "unlabelled images: rest (training images the run does not use) or npz:PATH / folder:PATH"),
        Param("fraction", 0.5, number(0.0, 1.0, open_hi=True), "a number in [0, 1)",  # Carmon et al. --unsup_fraction 0.5
              "fraction of every training batch that is pseudo-labelled"),
        Param("labeler", "", text, "a run file or .pt path, or '' to train one",
              "natural model that pseudo-labels (a run file or .pt of --arch); '' trains one on the labelled set"),
        Param("labeler_epochs", 0, integer(0), "an integer >= 0",
              "epochs of natural training for the labeler when trained here; 0: the run's --epochs"),
        Param("loss", "trades", choice(*ROBUST_LOSSES), f"one of {', '.join(ROBUST_LOSSES)}",  # Carmon et al.: TRADES
              "robust loss on the mixed batches"),
        Param("beta", 6.0, number(), "a finite number >= 0",  # Carmon et al.: TRADES beta = 6
              "weight of the robust loss's regularizer (TRADES beta, MART lambda; unused by at)"),
    ),
))
