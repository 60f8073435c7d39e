"""The trainer end to end on tiny digits runs: gamma = 0 is AT bit for bit, resume after kill -9 is
bitwise the uninterrupted run, overwrite/conflict/NaN guards, info/export, config resolution, schedules."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from awp.errors import UserError
from awp.losses import LossOutput
from awp.methods import at_loss
from awp.methods import METHODS, Method, pgd_ce_adversary, register_method
from awp.schedules import ScheduleSpec, learning_rate
from awp.store import open_run
from awp.train import NonFiniteLoss, train
from awp.trainconfig import TrainConfig, config_diff, format_toml, load_toml, resolve_config
from conftest import ROOT, run_cli

# A run of seconds: 60 training images, a 4-8-8 CNN, PGD-2.
TINY = {
    "arch_kwargs": '{"widths": [4, 8, 8]}', "train_size": 60, "train_eval_size": 30, "test_size": 50,
    "batch_size": 20, "train_steps": 2, "eval_steps": 2, "epochs": 3, "awp_warmup": 0, "device": "cpu",
    "threads": 1,
}
TINY_ARGS = [a for k, v in TINY.items() for a in (f"--{k.replace('_', '-')}", str(v))]
TIME_COLUMNS = ("time_train", "time_eval")


def _tiny(**kw) -> TrainConfig:
    return resolve_config({**TINY, **kw})


def assert_same_run(a: Path, b: Path) -> None:
    """Bitwise the same run: every metric except wall times, every saved tensor, the resume state."""
    ra, rb = open_run(a), open_run(b)
    assert ra.epochs_saved() == rb.epochs_saved() and ra.epochs_saved()
    assert (ra.best_epoch, ra.last_epoch) == (rb.best_epoch, rb.last_epoch)
    ma, mb = ra.metrics(), rb.metrics()
    assert set(ma) == set(mb)
    for k in ma:
        if k not in TIME_COLUMNS:
            np.testing.assert_array_equal(ma[k], mb[k], err_msg=k)
    for e in ra.epochs_saved():
        sa, sb = ra.state_dict(e), rb.state_dict(e)
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), (e, k)
    ta, tb = ra.resume_state().tensors, rb.resume_state().tensors
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


# ---------------------------------------------------------------------------------------------
# Library-level runs
# ---------------------------------------------------------------------------------------------


def test_gamma_zero_is_at_bit_for_bit_and_gamma_changes_it(tmp_path):
    train(_tiny(method="at"), tmp_path / "at.h5")
    train(_tiny(method="at-awp", gamma=0), tmp_path / "zero.h5")
    assert_same_run(tmp_path / "at.h5", tmp_path / "zero.h5")
    train(_tiny(method="at-awp", gamma=0.01, epochs=2), tmp_path / "awp.h5")
    r = open_run(tmp_path / "awp.h5")
    assert r.metrics()["awp_on"].tolist() == [1.0, 1.0]
    assert not torch.equal(r.state_dict(2)["net.0.weight"], open_run(tmp_path / "at.h5").state_dict(2)["net.0.weight"])


def test_warmup_and_metrics_and_val_split(tmp_path):
    res = train(_tiny(method="at-awp", awp_warmup=1, epochs=2, val_split=0.2, save_every=0), tmp_path / "r.h5")
    m = res.metrics
    assert m["epoch"].tolist() == [1.0, 2.0] and m["awp_on"].tolist() == [0.0, 1.0]
    for k in ("lr", "fit_loss", "fit_nat_acc", "fit_adv_acc", "train_nat_acc", "train_adv_acc", "test_nat_acc",
              "test_adv_acc", "val_nat_acc", "val_adv_acc", "gap", "time_train", "time_eval"):
        assert k in m and np.isfinite(m[k]).all(), k
    np.testing.assert_allclose(m["gap"], m["train_adv_acc"] - m["test_adv_acc"])
    r = open_run(tmp_path / "r.h5")
    assert r.best_val_epoch in (1, 2) and r.last_epoch == 2 and r.status == "finished"
    assert set(r.epochs_saved()) == {r.best_epoch, r.best_val_epoch, 2}
    train_ds, test_ds = r.datasets()
    assert len(train_ds) == 48 and len(test_ds) == 50  # 60 minus a 20% validation split


def _bn_buffers(model: torch.nn.Module) -> list[torch.Tensor]:
    return [b.clone() for n, b in model.named_buffers() if "running" in n or "num_batches" in n]


def test_bn_clean_reference_adds_exactly_one_clean_train_mode_pass():
    """With lr = 0 the weights stay put, so "reference" must leave BatchNorm running statistics exactly
    where "frozen" leaves them plus one train-mode forward of the clean batch; "frozen" never shows BN x."""
    from awp.methods import get_method
    from awp.models import create_model
    from awp.attacks import AttackConfig
    from awp.train import train_step

    def model():
        torch.manual_seed(0)
        return create_model("smallcnn", 10, 1, (0.3,), (0.4,), widths=(4, 8, 8)).train()

    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)
    attack = AttackConfig("linf", 0.25, 0.0625, 2)
    results, models = {}, {}
    for mode in ("frozen", "reference"):
        m = model()
        opt = torch.optim.SGD(m.parameters(), lr=0.0, momentum=0.9, weight_decay=5e-4)
        before = {k: p.detach().clone() for k, p in m.named_parameters()}
        results[mode] = train_step(m, opt, get_method("at"), x, y, attack, torch.Generator().manual_seed(2), bn_clean=mode)
        assert all(torch.equal(p, before[k]) for k, p in m.named_parameters()), mode  # lr = 0: weights unchanged
        models[mode] = m
    fresh = _bn_buffers(model())
    frozen, reference = _bn_buffers(models["frozen"]), _bn_buffers(models["reference"])
    assert not all(torch.equal(a, b) for a, b in zip(frozen, fresh))  # the adversarial passes moved them
    assert not all(torch.equal(a, b) for a, b in zip(reference, frozen))  # ... and the clean pass did too
    with torch.no_grad():
        models["frozen"](x)  # the one clean train-mode forward that "frozen" skips
    assert all(torch.equal(a, b) for a, b in zip(_bn_buffers(models["frozen"]), reference))
    assert results["frozen"] == results["reference"]  # same weights, batch statistics: same natural accuracy


def test_bn_clean_frozen_is_recorded_and_changes_the_run(tmp_path):
    a = train(_tiny(method="at", epochs=1), tmp_path / "ref.h5")
    b = train(_tiny(method="at", epochs=1, bn_clean="frozen"), tmp_path / "frozen.h5")
    assert open_run(tmp_path / "frozen.h5").train_config().bn_clean == "frozen"
    assert open_run(tmp_path / "ref.h5").train_config().bn_clean == "reference"
    sa, sb = open_run(a.path).state_dict(1), open_run(b.path).state_dict(1)
    running = {k for k in sa if "running" in k or "num_batches" in k}
    assert running and not all(torch.equal(sa[k], sb[k]) for k in running)
    # Training forwards use batch statistics: the weights are bitwise the same, only eval mode can differ.
    assert all(torch.equal(sa[k], sb[k]) for k in sa if k not in running)
    assert np.array_equal(a.metrics["fit_adv_acc"], b.metrics["fit_adv_acc"])


def _nan_after_four_steps() -> Method:
    calls = {"n": 0}

    def loss(model, x, x_adv, y) -> LossOutput:
        out = at_loss(model, x, x_adv, y)
        calls["n"] += 1
        return LossOutput(out.loss * (float("nan") if calls["n"] > 4 else 1.0), out.logits_adv)

    return Method("test-nan", pgd_ce_adversary, loss, summary="test only")


def test_nan_loss_stops_and_keeps_the_last_good_epoch(tmp_path):
    register_method(_nan_after_four_steps())
    try:
        with pytest.raises(NonFiniteLoss, match="epoch 2, step 2.*keeps epochs up to 1"):
            train(_tiny(method="test-nan"), tmp_path / "r.h5")  # 3 steps per epoch: step 5 is epoch 2
    finally:
        METHODS.unregister("test-nan")
    r = open_run(tmp_path / "r.h5")
    assert r.last_epoch == 1 and r.epochs_saved() == [1] and r.status.startswith("stopped: non-finite loss")
    assert issubclass(NonFiniteLoss, UserError)


# ---------------------------------------------------------------------------------------------
# The command line, in subprocesses
# ---------------------------------------------------------------------------------------------

KILL_EPOCHS = 30


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """An uninterrupted CLI run of KILL_EPOCHS tiny AT-AWP epochs, with its output."""
    out = tmp_path_factory.mktemp("runs") / "full.h5"
    r = run_cli("train-awp", "-o", str(out), "--method", "at-awp", "--awp-warmup", "1", "--save-every", "1",
                *TINY_ARGS, "--epochs", str(KILL_EPOCHS))
    assert r.returncode == 0, r.stderr
    return out, r


def test_one_summary_line_per_epoch_and_best_last(finished):
    _, r = finished
    lines = r.stdout.splitlines()
    assert sum(line.startswith("epoch ") for line in lines) == KILL_EPOCHS
    assert any(line.startswith("best ") for line in lines) and any(line.startswith("last ") for line in lines)
    assert 'method = "at"\n' in r.stdout and "awp = true\n" in r.stdout  # the resolved config is printed at start


def test_resume_after_kill_is_bitwise_the_uninterrupted_run(finished, tmp_path):
    full, _ = finished
    out = tmp_path / "killed.h5"
    args = [sys.executable, "-m", "cli", "train-awp", "-o", str(out), "--method", "at-awp", "--awp-warmup", "1",
            "--save-every", "1", *TINY_ARGS, "--epochs", str(KILL_EPOCHS), "--quiet"]
    proc = subprocess.Popen(args, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and proc.poll() is None:
        try:
            done = open_run(out).last_epoch or 0
        except UserError:
            done = 0  # not created yet
        if done >= 3:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = open_run(out).last_epoch
    assert 3 <= killed_at < KILL_EPOCHS, f"the run was not interrupted mid-way (last epoch {killed_at})"
    r = run_cli("train-awp", "-o", str(out), "--resume", "--quiet", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""  # --quiet prints nothing
    assert open_run(out).last_epoch == KILL_EPOCHS
    assert_same_run(full, out)


def test_existing_run_is_not_overwritten_and_resume_names_conflicts(finished, tmp_path):
    full, _ = finished
    copy = tmp_path / "copy.h5"
    copy.write_bytes(full.read_bytes())
    before = copy.read_bytes()
    r = run_cli("train-awp", "-o", str(copy), *TINY_ARGS)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: {str(copy)!r} already exists; pass --resume to continue it or --overwrite to start over"
    ]
    r = run_cli("train-awp", "-o", str(copy), "--resume", "--lr", "0.2", "--train-steps", "3")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "config differs in train_steps (run: 2, now: 3), lr (run: 0.05, now: 0.2)" in r.stderr
    assert copy.read_bytes() == before


def test_info_and_export(finished, tmp_path):
    full, _ = finished
    r = run_cli("info", str(full))
    assert r.returncode == 0, r.stderr
    reader = open_run(full)
    assert "method     at-awp\n" in r.stdout and 'method = "at"\n' in r.stdout and "awp = true\n" in r.stdout
    assert "test_adv" in r.stdout
    # Both training robustness measures, labelled: the paper's running one and the eval-mode one of the gap.
    header = next(line for line in r.stdout.splitlines() if line.split()[:1] == ["epoch"])
    assert {"fit_adv", "train_adv", "test_adv", "gap"} <= set(header.split())
    assert "fit_adv is the paper's training" in r.stdout and "fixed unaugmented training subset" in r.stdout
    assert any(line.startswith("best ") and "(eval)" in line and "(fit)" in line for line in r.stdout.splitlines())
    assert any(line.split()[:1] == [str(reader.best_epoch)] and "best" in line for line in r.stdout.splitlines())
    assert any(line.split()[:1] == [str(KILL_EPOCHS)] and "last" in line for line in r.stdout.splitlines())

    out = tmp_path / "m.pt"
    r = run_cli("export", str(full), "--epoch", "best", "-o", str(out))
    assert r.returncode == 0, r.stderr
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["epoch"] == reader.best_epoch and ckpt["arch"] == "smallcnn" and ckpt["dataset"] == "digits"
    assert ckpt["arch_kwargs"] == {"widths": [4, 8, 8]} and ckpt["mean"] == [0.3] and ckpt["std"] == [0.4]
    assert (ckpt["num_classes"], ckpt["in_channels"]) == (10, 1)
    assert '"method": "at"' in ckpt["config_json"] and '"use_awp": true' in ckpt["config_json"]
    from awp.models import create_model

    model = create_model(ckpt["arch"], ckpt["num_classes"], ckpt["in_channels"], ckpt["mean"], ckpt["std"], **ckpt["arch_kwargs"])
    model.load_state_dict(ckpt["state_dict"])
    x = torch.rand(5, 1, 8, 8)
    assert torch.equal(model.eval()(x), reader.build_model(reader.best_epoch)(x))


@pytest.mark.parametrize(
    "args,needle",
    [
        (["train-awp", "--method", "madry"], "unknown method 'madry'; accepted: at, at-awp, natural"),
        (["train-awp", "--gamma", "-0.01"], "gamma '-0.01' is negative"),
        (["train-awp", "--awp-steps", "0"], "--awp-steps must be >= 1, got 0"),
        (["train-awp", "--lr-schedule", "step"], "unknown lr schedule 'step'; accepted: piecewise, cosine, cyclic"),
        (["train-awp", "--epochs", "ten"], "Invalid value for '--epochs'"),
        (["export", "tests/conftest.py", "--epoch", "best"], "is not an HDF5 file"),
    ],
)
def test_bad_options_give_one_line(args, needle):
    r = run_cli(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr


def test_nan_from_the_command_line_is_one_line(tmp_path):
    r = run_cli("train-awp", "-o", str(tmp_path / "r.h5"), *TINY_ARGS, "--lr", "1e30", "--quiet")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"error: training loss became NaN/inf at epoch 1, step 2; stopped, {str(tmp_path / 'r.h5')!r} keeps no "
        "epochs (try a smaller --lr or --gamma)"
    ]


# ---------------------------------------------------------------------------------------------
# Config resolution and schedules (in process, fast)
# ---------------------------------------------------------------------------------------------


def test_dataset_and_norm_defaults():
    d = resolve_config({})
    assert (d.dataset, d.arch, d.attack.eps, d.attack.step_size, d.attack.steps, d.epochs) == ("digits", "smallcnn", 0.25, 0.0625, 10, 100)
    assert (d.train_size, d.awp.gamma, d.awp_warmup, d.lr, d.awp.eta2) == (300, 0.01, 10, 0.05, 0.01)
    c = resolve_config({"dataset": "cifar10", "method": "at-awp"})
    assert (c.arch, c.attack.eps, c.attack.step_size, c.eval_steps, c.lr, c.awp.gamma, c.epochs, c.batch_size) == (
        "preactresnet18", 8 / 255, 2 / 255, 20, 0.1, 1e-2, 200, 128)  # Section 4.4 / Table 1: gamma 1e-2
    s = resolve_config({"dataset": "svhn"})
    assert (s.attack.step_size, s.lr, s.awp_warmup) == (1 / 255, 0.01, 5)
    l2 = resolve_config({"dataset": "cifar10", "norm": "l2"})
    assert (l2.attack.eps, l2.attack.step_size) == (128 / 255, 15 / 255)
    eps = resolve_config({"eps": "0.3"})
    assert eps.attack.step_size == pytest.approx(0.075) and eps.eval_step_size == eps.attack.step_size
    k = resolve_config({"gamma": "0.02", "awp_steps": 2, "awp_alternations": 2})
    assert k.awp.eta2 == pytest.approx(0.005)  # Appendix D.2: gamma / (A * K2)


def test_toml_file_then_flags(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('eps = "8/255"\nepochs = 7\nlr-schedule = "cosine"\narch_kwargs = {widths = [4, 8, 8]}\n')
    cfg = resolve_config({"epochs": 9}, f)
    assert (cfg.attack.eps, cfg.epochs, cfg.lr_schedule, cfg.arch_kwargs) == (8 / 255, 9, "cosine", {"widths": [4, 8, 8]})
    again = tmp_path / "again.toml"
    again.write_text(format_toml(cfg))  # the printed config is a valid --config file
    assert resolve_config({}, again) == cfg
    assert config_diff(cfg, resolve_config({"device": "cpu"}, again)) == []  # runtime options do not conflict
    (tmp_path / "bad.toml").write_text("epoks = 3\n")
    with pytest.raises(UserError, match="unknown option 'epoks'"):
        load_toml(tmp_path / "bad.toml")


@pytest.mark.parametrize(
    "flags,needle",
    [
        ({"val_split": "1.5"}, "--val-split must be in [0, 1)"),
        ({"lr_milestones": "0.8,0.5"}, "--lr-milestones must be increasing"),
        ({"arch_kwargs": "{bad"}, "--arch-kwargs must be a JSON object"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"momentum": "1"}, "momentum must be in [0, 1)"),
        ({"awp_alternations": 0}, "--awp-alternations must be >= 1"),
        ({"dataset": "mnist"}, "unknown dataset 'mnist'"),
        ({"norm": "l3"}, "unknown norm 'l3'"),
        ({"eps": "8/x"}, "eps '8/x' is not a number"),
    ],
)
def test_bad_values_are_user_errors(flags, needle):
    with pytest.raises(UserError) as e:
        resolve_config(flags)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_schedules():
    spec = ScheduleSpec(0.1, 200)
    pw = [learning_rate("piecewise", spec, e, 9, 10) for e in (1, 100, 101, 150, 151, 200)]
    assert pw == [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]  # /10 at 50% and 75%, as Section 3
    assert learning_rate("cosine", spec, 1, 0, 10) == pytest.approx(0.1, rel=1e-4)
    assert learning_rate("cosine", spec, 100, 9, 10) == pytest.approx(0.05)  # lr0/2 (cos(pi/2) + 1)
    assert learning_rate("cosine", spec, 200, 9, 10) == pytest.approx(0.0, abs=1e-12)
    assert learning_rate("cyclic", spec, 80, 9, 10) == pytest.approx(0.1)  # peak at 40% (epoch 80 of 200)
    assert learning_rate("cyclic", spec, 40, 9, 10) == pytest.approx(0.05)
    assert learning_rate("cyclic", spec, 200, 9, 10) == pytest.approx(0.0, abs=1e-12)
