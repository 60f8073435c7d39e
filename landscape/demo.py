"""The main job on the embedded default: train a small model adversarially and report what it learned."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from awp.attacks import AttackConfig, pgd
from awp.data import batches, load_dataset
from awp.evaluate import evaluate
from awp.models import create_model


@dataclass(frozen=True)
class DemoConfig:
    dataset: str = "digits"
    arch: str = "smallcnn"
    norm: str = "linf"
    eps: float = 0.25
    steps: int = 10
    epochs: int = 15
    seed: int = 0
    data_dir: str = "data"
    lr: float = 0.05
    batch_size: int = 64


def run_demo(cfg: DemoConfig, device: torch.device) -> dict[str, float]:
    """PGD adversarial training (Eq. 1) for a few epochs, then clean and PGD accuracy on the test split."""
    attack = AttackConfig(cfg.norm, cfg.eps, cfg.eps / 4, cfg.steps)
    splits = load_dataset(cfg.dataset, cfg.data_dir, seed=cfg.seed)
    info = splits.info
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.arch, info.num_classes, info.in_channels, info.mean, info.std).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(cfg.seed)
    before = evaluate(model, splits.test, attack, device=device, seed=cfg.seed)
    print(f"{cfg.arch} on {cfg.dataset}: {len(splits.train)} train / {len(splits.test)} test images, "
          f"{cfg.norm} eps={cfg.eps:g}, PGD-{cfg.steps}")
    print(f"before training: clean acc {before['nat_acc']:.3f}  PGD acc {before['adv_acc']:.3f}")
    t0 = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        for x, y in batches(splits.train, cfg.batch_size, shuffle=True, generator=gen, device=device):
            x_adv = pgd(model, x, y, eps=attack.eps, step_size=attack.step_size, steps=attack.steps,
                        norm=attack.norm, generator=gen)
            loss = F.cross_entropy(model(x_adv), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        print(f"epoch {epoch:3d}  train adversarial loss {loss.item():.3f}")
    after = evaluate(model, splits.test, attack, device=device, seed=cfg.seed)
    print(f"after {cfg.epochs} epochs ({time.perf_counter() - t0:.0f} s): "
          f"clean acc {after['nat_acc']:.3f}  PGD acc {after['adv_acc']:.3f}")
    return after
