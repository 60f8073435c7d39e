"""Input attacks as pure functions on tensors: PGD (Eq. 14, Madry et al.) and FGSM (Eq. 13), L-inf and L2.

Inputs are pixels in [0, 1] (the model owns normalization). Adversarial examples always stay in [0, 1]
and inside the eps-ball. Gradients are taken with `torch.autograd.grad` with respect to the input only,
so parameter `.grad` is never touched; one forward and one backward per step, no per-example Python.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from awp.errors import UserError
from awp.registry import Registry

# A loss maps (logits [B, C], target) to per-example losses [B]; the target is labels [B] for
# cross-entropy and margin losses, or natural-example probabilities [B, C] for TRADES' KL (Eq. 16).
LossFn = Callable[[Tensor, Tensor], Tensor]


def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Per-example cross-entropy, the adversarial loss of Eq. 1 / Eq. 5."""
    return F.cross_entropy(logits, y, reduction="none")


def kl_from_natural(logits_adv: Tensor, p_nat: Tensor) -> Tensor:
    """Per-example KL(p_nat || softmax(logits_adv)), the TRADES inner objective (Eq. 2, Eq. 16)."""
    log_p_adv = F.log_softmax(logits_adv, dim=1)
    return F.kl_div(log_p_adv, p_nat, reduction="none").sum(dim=1)


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """Per-example CW margin max_{k != y} z_k - z_y (positive where misclassified)."""
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, y[:, None], float("-inf"))
    return other.amax(dim=1) - z_y


LOSSES: dict[str, LossFn] = {"ce": cross_entropy, "kl": kl_from_natural, "margin": margin}


# ---------------------------------------------------------------------------------------------
# Threat models: random start, ascent step and projection per norm (a registry, not if-chains)
# ---------------------------------------------------------------------------------------------


class ThreatModel(Protocol):
    max_eps: float  # the largest radius that means something for images in [0, 1]

    def random_delta(
        self, x: Tensor, eps: float, generator: torch.Generator | None, l2_start: str = "reference"
    ) -> Tensor: ...
    def ascend(self, grad: Tensor, step_size: float) -> Tensor: ...
    def project(self, delta: Tensor, eps: float) -> Tensor: ...


def _per_example_norm(t: Tensor) -> Tensor:
    """L2 norm of each example, shaped [B, 1, 1, ...] to broadcast against t."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def _rand(shape: torch.Size, x: Tensor, generator: torch.Generator | None, normal: bool) -> Tensor:
    """Random numbers from `generator` (on its own device), moved to x's device: CPU generators make
    random starts independent of where the model runs."""
    dev = generator.device if generator is not None else x.device
    fn = torch.randn if normal else torch.rand
    return fn(shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)


class Linf:
    max_eps = 1.0  # every pixel is in [0, 1]: a larger L-inf radius is eps meant as eps/255

    def random_delta(
        self, x: Tensor, eps: float, generator: torch.Generator | None, l2_start: str = "reference"
    ) -> Tensor:
        # Alg. 1 line 10 / Alg. 2 line 6: x' = x + eps * delta, delta ~ Uniform(-1, 1) per pixel, as the
        # reference's `delta.uniform_(-epsilon, epsilon)`; `l2_start` is for L2 only.
        return eps * (2 * _rand(x.shape, x, generator, normal=False) - 1)

    def ascend(self, grad: Tensor, step_size: float) -> Tensor:
        return step_size * grad.sign()  # Eq. 14: eta1 * sign(grad)

    def project(self, delta: Tensor, eps: float) -> Tensor:
        return delta.clamp(-eps, eps)  # Pi_eps for L-inf


# L2 random starts: delta = eps * r * g / ||g|| with g ~ N(0, I) (a uniform direction) and r = radius(u, d),
# u ~ U(0, 1) per example, d = pixels per example. A registry, so a new start is one entry.
L2Radius = Callable[[Tensor, int], Tensor]
L2_STARTS: Registry[L2Radius] = Registry("L2 random start", {
    # The reference's (csdongxian/AWP and Rice et al.'s `attack_pgd`, norm "l_2": `delta.normal_()`, then
    # `delta *= r / ||delta|| * epsilon` with r ~ U(0, 1)): the radius is uniform in [0, eps], so starts
    # fill the ball radially and most lie well inside it.
    "reference": lambda u, d: u,
    # Uniform in the L2 ball (volume): radius eps * u^(1/d). In d = 3,072 (CIFAR) u^(1/d) > 0.998 for all
    # but 0.2% of draws, so every start lies on the sphere.
    "ball": lambda u, d: u.pow(1.0 / d),
})


def l2_start_radius(name: str) -> L2Radius:
    """The L2 start registered as `name`; an unknown name is a one-line `UserError` listing the known ones."""
    return L2_STARTS.lookup(name)


class L2:
    max_eps = float("inf")  # the L2 diameter of [0, 1]^d grows with d: no bound independent of the data

    def random_delta(
        self, x: Tensor, eps: float, generator: torch.Generator | None, l2_start: str = "reference"
    ) -> Tensor:
        radius_of = l2_start_radius(l2_start)
        g = _rand(x.shape, x, generator, normal=True)  # the direction first, then the radius: one draw order
        u = _rand(torch.Size([x.shape[0]]), x, generator, normal=False)  # for every start
        radius = (eps * radius_of(u, x[0].numel())).view(-1, *([1] * (x.dim() - 1)))
        return g / _per_example_norm(g).clamp_min(1e-12) * radius

    def ascend(self, grad: Tensor, step_size: float) -> Tensor:
        return step_size * grad / _per_example_norm(grad).clamp_min(1e-12)  # steepest L2 ascent

    def project(self, delta: Tensor, eps: float) -> Tensor:
        # Pi_eps for L2, per example: shrink onto the sphere only where ||delta|| > eps.
        scale = (eps / _per_example_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
        return delta * scale


NORMS: Registry[ThreatModel] = Registry("norm", {"linf": Linf(), "l2": L2()})


def threat_model(norm: str) -> ThreatModel:
    return NORMS.lookup(norm)


@dataclass(frozen=True)
class AttackConfig:
    """A PGD attack: `eps` radius and `step_size` (the paper's eta1) in pixel units, `steps` (K1);
    `l2_start` is the L2 random start of `L2_STARTS` (ignored for L-inf). A config stored before
    `l2_start` existed loads with the default."""

    norm: str = "linf"
    eps: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 10
    random_start: bool = True
    l2_start: str = "reference"  # the reference code's radius ~ U(0, eps); "ball": uniform in the ball

    def __post_init__(self) -> None:
        tm = threat_model(self.norm)
        l2_start_radius(self.l2_start)
        if not self.eps >= 0:
            raise UserError(f"eps must be >= 0, got {self.eps}")
        if self.eps > tm.max_eps:
            raise UserError(f"--eps {self.eps:g} is above {tm.max_eps:g}, but {self.norm} radii are in pixel units of "
                            f"images in [0, 1]; did you mean {self.eps:g}/255?")
        if not self.step_size >= 0:
            raise UserError(f"step size must be >= 0, got {self.step_size}")
        if self.steps < 0:
            raise UserError(f"steps must be >= 0, got {self.steps}")


# ---------------------------------------------------------------------------------------------
# Attacks
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def model_mode(model: nn.Module, train: bool | None) -> Iterator[None]:
    """Run in train (True) or eval (False) mode, or leave the mode alone (None); restore afterwards."""
    if train is None:
        yield
        return
    was = [m.training for m in model.modules()]
    model.train(train)
    try:
        yield
    finally:
        for m, t in zip(model.modules(), was):
            m.training = t


def random_start(
    x: Tensor, eps: float, norm: str = "linf", generator: torch.Generator | None = None, l2_start: str = "reference"
) -> Tensor:
    """A random start delta inside the eps-ball (`l2_start`: which L2 start, see `L2_STARTS`); pass it
    as `delta0` to reuse one start across models (the landscape's common random numbers)."""
    return threat_model(norm).random_delta(x, eps, generator, l2_start)


def small_start(x: Tensor, generator: torch.Generator | None, scale: float = 1e-3) -> Tensor:
    """TRADES' and MART's random start, delta = 0.001 * N(0, I) (their reference code's
    `x + 0.001 * torch.randn(x.shape)`), for either norm; pass it as `delta0`."""
    return scale * _rand(x.shape, x, generator, normal=True)


def pgd(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    attack: AttackConfig | None = None,
    *,
    eps: float | None = None,
    step_size: float | None = None,
    steps: int | None = None,
    norm: str = "linf",
    loss_fn: LossFn = cross_entropy,
    random_start: bool = True,
    delta0: Tensor | None = None,
    generator: torch.Generator | None = None,
    train_mode: bool | None = None,
    l2_start: str = "reference",
) -> Tensor:
    """PGD (Eq. 14): `steps` ascent steps of size `step_size` on `loss_fn`, projected onto the eps-ball
    and [0, 1]. Returns detached adversarial inputs shaped like `x` [B, C, H, W].

    The attack is an `AttackConfig` (norm, eps, step size, steps, random start, L2 start), or, without
    one, the keywords `eps`, `step_size`, `steps` (and `norm`, `random_start`, `l2_start`).
    `delta0` fixes the random start (else one is drawn from `generator` when `random_start`, for L2
    from the `l2_start` distribution of `L2_STARTS`).
    `train_mode` None keeps the model's mode (the reference AT code attacks in train mode);
    True/False switch for the attack and restore the caller's mode afterwards.
    """
    if attack is not None:
        if (eps, step_size, steps) != (None, None, None):
            raise TypeError("pgd takes an AttackConfig or eps/step_size/steps, not both")
        eps, step_size, steps, norm = attack.eps, attack.step_size, attack.steps, attack.norm
        random_start, l2_start = attack.random_start, attack.l2_start
    elif eps is None or step_size is None or steps is None:
        raise TypeError("pgd needs an AttackConfig or all of eps, step_size and steps")
    tm = threat_model(norm)
    if delta0 is None:
        delta0 = tm.random_delta(x, eps, generator, l2_start) if random_start and eps > 0 else torch.zeros_like(x)
    x = x.detach()
    x_adv = (x + tm.project(delta0, eps)).clamp(0.0, 1.0)
    with model_mode(model, train_mode), torch.enable_grad():
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = loss_fn(model(x_adv), target).sum()  # sum: per-example gradients, batch-size free
            (grad,) = torch.autograd.grad(loss, x_adv)
            with torch.no_grad():
                delta = tm.project(x_adv + tm.ascend(grad, step_size) - x, eps)  # Eq. 14: Pi_eps(x' + step)
                x_adv = (x + delta).clamp(0.0, 1.0)
    return x_adv.detach()


def fgsm(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    *,
    eps: float,
    norm: str = "linf",
    loss_fn: LossFn = cross_entropy,
    train_mode: bool | None = None,
) -> Tensor:
    """FGSM (Eq. 13): one step of size eps from the clean input (no random start)."""
    return pgd(
        model, x, target, eps=eps, step_size=eps, steps=1, norm=norm, loss_fn=loss_fn,
        random_start=False, train_mode=train_mode,
    )
