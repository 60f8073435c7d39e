"""Precision and kernel options (`awp.kernels`, issue 15): bf16 adversarial losses within a measured
tolerance of fp32 on a trained smallcnn, channels_last equal to contiguous within float tolerance, every
option through training, `landscape eval` and the landscape job, fp16 on CPU as documented, and
`--compile` working or falling back with one warning."""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
import shutil
import warnings

import pytest
import torch
import torch.nn.functional as F

from awp.attacks import AttackConfig, pgd
from awp.errors import UserError
from awp.evaluate import evaluate
from awp.kernels import PRECISIONS, Kernels, KernelWarning
from awp.models import create_model
from awp.store import open_run
from awp.train import train
from awp.trainconfig import TrainConfig, config_diff, resolve_config
from conftest import one_line

# A run of seconds (as tests/test_train.py's): 60 images, a 4-8-8 CNN, PGD-2, AWP on from epoch 1 so the
# ascent runs under the precision too.
TINY = {
    "method": "at-awp", "arch_kwargs": '{"widths": [4, 8, 8]}', "train_size": 60, "train_eval_size": 30,
    "test_size": 50, "batch_size": 20, "train_steps": 2, "eval_steps": 2, "epochs": 2, "awp_warmup": 0,
    "device": "cpu", "threads": 1,
}

# bf16 vs fp32 on conftest's smallcnn recipe (adversarially trained 4 epochs, eps 0.2), 500 test images, PGD-10 at
# eps 0.1 and 0.2, PGD run on the fly under each precision: measured over 3 training seeds, the mean
# adversarial cross-entropy differed by at most 0.0011 (of ~2.2; the natural one by 0.0004) and robust
# accuracy by at most 0.006 (3 of 500 examples). Allowed, with margin (README, "Precision and kernels"):
BF16_LOSS_TOL = 0.01
BF16_ACC_TOL = 0.02
# channels_last vs contiguous, same precision: float summation order only.
LAYOUT_TOL = 1e-5


@contextlib.contextmanager
def one_thread():
    """One torch thread for the block: 2 threads on 2 busy cores ran this file's training 5-10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits_data(digits):
    return digits


@pytest.fixture(scope="module")
def trained(trained_smallcnn):
    """conftest's smallcnn, adversarially trained for 4 epochs on 600 digits (eps 0.2), eval mode."""
    return trained_smallcnn


@pytest.fixture(scope="module")
def run_file(tmp_path_factory):
    """A finished fp32 tiny AT-AWP run (2 epochs)."""
    path = tmp_path_factory.mktemp("kernels") / "run.h5"
    train(resolve_config(TINY), path)
    return path


def _eager_compile(monkeypatch):
    """torch.compile with dynamo's "eager" backend: graphs captured, no code generated (seconds, exact)."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))


def _has_cxx() -> bool:
    return any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++"))


# ---------------------------------------------------------------------------------------------
# Kernels itself
# ---------------------------------------------------------------------------------------------


def test_bad_values_are_one_line_naming_the_accepted_ones():
    with pytest.raises(UserError) as e:
        Kernels("fp8")
    one_line(e, "fp8", "--precision", "fp32", "bf16", "fp16")
    with pytest.raises(UserError) as e:
        Kernels(channels_last="yes")
    one_line(e, "--channels-last", "yes")
    with pytest.raises(UserError) as e:
        resolve_config({**TINY, "precision": "float16"})
    one_line(e, "float16", "fp32, bf16, fp16")
    assert PRECISIONS.names() == ("fp32", "bf16", "fp16")


def test_default_is_plain_fp32_and_records():
    k = Kernels()
    with k.autocast("cpu"):
        assert not torch.is_autocast_enabled("cpu")  # fp32: no autocast at all, today's numbers
    assert not k.scaler("cpu").is_enabled()
    assert k.record() == {"precision": "fp32", "channels_last": False, "compile": False}
    assert k.decides() == {}  # absent at the default: files written before --precision still resume
    assert Kernels("bf16", True).decides() == {"precision": "bf16"}
    with Kernels("bf16").autocast(torch.device("cpu")):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert Kernels("fp16").scaler("cpu").is_enabled() and not Kernels("bf16").scaler("cpu").is_enabled()
    x = torch.rand(2, 3, 4, 4)
    assert Kernels().inputs(x) is x
    assert Kernels(channels_last=True).inputs(x).is_contiguous(memory_format=torch.channels_last)
    assert Kernels(channels_last=True).inputs(torch.rand(2, 3)).shape == (2, 3)  # not an image batch: as it is


def test_weights_moved_inside_one_autocast_region_are_seen():
    """AWP's w + v and the landscape's w + alpha d move weights in place within one region: autocast's
    weight-cast cache (on by default) would keep computing with the weights before the move."""
    lin = torch.nn.Linear(4, 2)
    x = torch.randn(3, 4)
    with Kernels("bf16").autocast("cpu"):
        before = lin(x)
        with torch.no_grad():
            lin.weight.add_(1.0)
        after = lin(x)
    assert (after - before).abs().max() > 0.5


def test_a_precision_torch_cannot_run_is_one_line(monkeypatch):
    """Where torch's autocast would warn and run in float32 (fp16 on an older torch's CPU) or raise
    (bf16 on an old GPU), the command stops before any compute instead."""
    real = torch.autocast

    class Disabling(real):
        def __init__(self, device_type, dtype=None, enabled=True, cache_enabled=None):
            warnings.warn("In CPU autocast, but the target dtype is not supported. Disabling autocast.\nmore")
            super().__init__(device_type, dtype=dtype, enabled=False, cache_enabled=cache_enabled)

    monkeypatch.setattr(torch, "autocast", Disabling)
    with pytest.raises(UserError) as e:
        Kernels("fp16").check("cpu")
    one_line(e, "--precision fp16", "cpu", "fp32")

    def raising(*a, **kw):
        raise RuntimeError("Current CUDA Device does not support bfloat16. Please switch dtype to float16.")

    monkeypatch.setattr(torch, "autocast", raising)
    with pytest.raises(UserError) as e:
        Kernels("bf16").check("cpu")
    one_line(e, "--precision bf16", "bfloat16")
    Kernels().check("cpu")  # fp32 never needs autocast


# ---------------------------------------------------------------------------------------------
# Numbers: bf16 within the tolerance, channels_last within float tolerance
# ---------------------------------------------------------------------------------------------


def test_bf16_adversarial_loss_within_tolerance_of_fp32(trained, digits_data):
    """Eq. 5's quantity, PGD on the fly under each precision, on a trained model."""
    attack = AttackConfig(eps=0.2, step_size=0.05, steps=10)
    out = {}
    with one_thread():
        for p in ("fp32", "bf16"):
            with Kernels(p).autocast("cpu"):
                out[p] = evaluate(trained, digits_data.test, attack, batch_size=500, device="cpu", seed=0)
        with Kernels("bf16").autocast("cpu"):
            assert trained(digits_data.test.tensors[0][:4]).dtype == torch.bfloat16  # bf16 did run
    a, b = out["fp32"], out["bf16"]
    assert 0.1 < a["adv_acc"] < a["nat_acc"] - 0.1  # a trained model with something to attack
    assert a != b  # not vacuous: the numbers moved
    assert abs(a["adv_loss"] - b["adv_loss"]) <= BF16_LOSS_TOL, (a, b)
    assert abs(a["nat_loss"] - b["nat_loss"]) <= BF16_LOSS_TOL, (a, b)
    assert abs(a["adv_acc"] - b["adv_acc"]) <= BF16_ACC_TOL, (a, b)


def test_channels_last_matches_contiguous(trained, digits_data):
    model = copy.deepcopy(trained)
    k = Kernels(channels_last=True)
    assert k.prepare(model) is model
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in trained.named_parameters()]
    conv = dict(model.named_parameters())["net.3.weight"]  # [32, 16, 3, 3]
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    for (name, a), b in zip(trained.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name  # the same values, another layout
    x, y = digits_data.test.tensors
    x, y = x[:200], y[:200]
    with one_thread():
        xa = pgd(trained, x, y, eps=0.2, step_size=0.05, steps=5, generator=torch.Generator().manual_seed(0))
        xb = pgd(model, k.inputs(x), y, eps=0.2, step_size=0.05, steps=5, generator=torch.Generator().manual_seed(0))
        la, lb = trained(xa), model(k.inputs(xb))
    # PGD's sign(grad) can flip where a gradient entry is ~0: compare the examples loosely, the losses tightly.
    assert (xa - xb).abs().gt(1e-4).float().mean() < 0.01
    assert abs(F.cross_entropy(la, y).item() - F.cross_entropy(lb, y).item()) < 1e-3
    same = torch.isclose(la, lb, atol=LAYOUT_TOL, rtol=LAYOUT_TOL).all(1)
    assert same.float().mean() > 0.95


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [
    {"precision": "bf16"}, {"precision": "fp16"}, {"channels_last": True}, {"compile": True},
], ids=["bf16", "fp16", "channels_last", "compile"])
def test_each_option_trains_and_is_recorded(options, tmp_path, run_file, monkeypatch):
    if options.get("compile"):
        _eager_compile(monkeypatch)  # the wiring; real code generation: test_compile_with_inductor
    cfg = resolve_config({**TINY, **options})
    res = train(cfg, tmp_path / "r.h5")
    reader = open_run(tmp_path / "r.h5")
    assert {k: reader.config[k] for k in options} == options  # in the run file's config
    assert reader.train_config().kernels == cfg.kernels
    for name in ("fit_loss", "train_adv_loss", "test_adv_loss", "test_adv_acc"):
        assert torch.isfinite(torch.as_tensor(res.metrics[name])).all(), name
    base = open_run(run_file).metrics()
    if "precision" in options:  # changes the numbers: resuming under fp32 is refused, naming it
        assert res.metrics["fit_loss"].tolist() != base["fit_loss"].tolist()
        assert config_diff(cfg, resolve_config(TINY)) == ["precision"]
        with pytest.raises(UserError) as e:
            train(resolve_config(TINY), tmp_path / "r.h5", resume=True)
        one_line(e, "precision", options["precision"], "fp32")
    else:  # speed only: a resume may switch it; the numbers are fp32's up to float order
        assert config_diff(cfg, resolve_config(TINY)) == []
        torch.testing.assert_close(torch.as_tensor(res.metrics["fit_loss"]), torch.as_tensor(base["fit_loss"]),
                                   atol=1e-4, rtol=1e-4)
    if options.get("precision") == "fp16":  # the documented CPU behaviour: accepted, loss-scaled
        scaler = reader.resume_state().state["grad_scaler"]
        assert scaler["scale"] >= 1.0 and scaler["_growth_tracker"] >= 0
    else:
        assert "grad_scaler" not in reader.resume_state().state


def test_fp16_step_on_cpu_scales_the_loss_and_skips_overflow(digits_data):
    """fp16 on CPU: a GradScaler step; a step whose gradients overflow is skipped, weights untouched."""
    from awp.methods import get_method
    from awp.train import train_step

    info = digits_data.info
    torch.manual_seed(0)
    model = create_model("smallcnn", info.num_classes, info.in_channels, info.mean, info.std, widths=[4, 8, 8]).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    k = Kernels("fp16")
    scaler = k.scaler("cpu")
    x, y = digits_data.train.tensors
    x, y = x[:20], y[:20]
    attack = AttackConfig(eps=0.2, step_size=0.05, steps=1)
    with one_thread():
        w0 = [p.detach().clone() for p in model.parameters()]
        r = train_step(model, opt, get_method("at"), x, y, attack, torch.Generator().manual_seed(0), kernels=k, scaler=scaler)
        assert r.n == 20 and torch.isfinite(torch.tensor(r.loss_sum))
        assert any(not torch.equal(a, p) for a, p in zip(w0, model.parameters()))  # it stepped
        assert scaler.get_scale() == 65536.0  # torch's initial scale, no overflow yet
        scaler.update(new_scale=1e38)  # forces fp16 overflow in the scaled backward
        w1 = [p.detach().clone() for p in model.parameters()]
        train_step(model, opt, get_method("at"), x, y, attack, torch.Generator().manual_seed(0), kernels=k, scaler=scaler)
        assert all(torch.equal(a, p) for a, p in zip(w1, model.parameters()))  # skipped
        assert scaler.get_scale() < 1e38  # and backed off


def test_a_run_file_from_before_the_options_loads_as_fp32():
    d = TrainConfig().to_dict()
    for k in ("precision", "channels_last", "compile"):
        del d[k]
    assert TrainConfig.from_dict(d).kernels == Kernels()


# ---------------------------------------------------------------------------------------------
# landscape eval and the landscape job
# ---------------------------------------------------------------------------------------------


def test_eval_records_the_precision_and_refuses_another(run_file, tmp_path):
    from landscape.commands.evaluate import EvalConfig, run_eval

    out = tmp_path / "ev.json"
    kw = dict(checkpoint=str(run_file), attacks="fgsm,pgd2", samples=20, out=str(out), progress=False)
    with one_thread():
        doc = run_eval(EvalConfig(**kw, precision="bf16", channels_last=True))
        rec = doc["evaluations"][0]
        assert rec["settings"]["precision"] == "bf16"
        assert rec["kernels"] == {"precision": "bf16", "channels_last": True, "compile": False}
        assert json.loads(out.read_text())["evaluations"][0]["kernels"]["precision"] == "bf16"
        with pytest.raises(UserError) as e:  # its per-example results were computed in bf16
            run_eval(EvalConfig(**kw))
        one_line(e, "precision", "bf16")
        plain = run_eval(EvalConfig(**{**kw, "out": str(tmp_path / "fp32.json")}))["evaluations"][0]
    assert "precision" not in plain["settings"] and plain["kernels"]["precision"] == "fp32"
    with pytest.raises(UserError) as e:
        EvalConfig(**kw, precision="fp8")
    one_line(e, "fp8", "fp32, bf16, fp16")


def test_evaluate_model_under_each_precision(trained, digits_data):
    from awp.robustness import evaluate_model

    ds = torch.utils.data.Subset(digits_data.test, range(100))
    with one_thread():
        acc = {p: evaluate_model(copy.deepcopy(trained), ds, "natural,pgd5", eps=0.1, batch_size=100,
                                 kernels=Kernels(p, channels_last=True)).tallies["pgd5"].accuracy()
               for p in ("fp32", "bf16", "fp16")}
    assert max(acc.values()) - min(acc.values()) <= BF16_ACC_TOL * 2, acc


def test_attacks_get_float32_logits(trained, digits_data):
    x = digits_data.test.tensors[0][:4]
    assert Kernels().float_logits(trained) is trained
    with Kernels("bf16").autocast("cpu"):
        assert trained(x).dtype == torch.bfloat16
        assert Kernels("bf16").float_logits(trained)(x).dtype == torch.float32


def test_autoattack_under_bf16(trained, digits_data):
    """AutoAttack's Square attack writes logits into float32 buffers of its own: bf16 logits broke it."""
    pytest.importorskip("pyautoattack")
    from awp.robustness import evaluate_model

    ds = torch.utils.data.Subset(digits_data.test, range(8))
    with one_thread():
        ev = evaluate_model(copy.deepcopy(trained), ds, "natural,autoattack", eps=0.1, batch_size=8,
                            kernels=Kernels("bf16"))
    assert ev.tallies["autoattack"].complete
    assert (ev.tallies["autoattack"].robust <= ev.tallies["natural"].robust).all()


def test_probe_job_is_prepared_and_recorded(run_file, tmp_path):
    from landscape.commands.probe import ProbeConfig, plan, run_probe
    from landscape.storage.results import Landscape

    kw = dict(checkpoint=str(run_file), dirs=1, alphas="-1:1:3", samples=10, steps=1, progress=False)
    cfg = ProbeConfig(**kw, precision="bf16", channels_last=True, out=str(tmp_path / "p.h5"))
    p = plan(cfg)
    assert p.results.config["precision"] == "bf16"
    job = p.job(p.results, torch.device("cpu"))
    assert job.kernels == Kernels("bf16", channels_last=True)
    model = job.builds[0](torch.device("cpu"))
    assert dict(model.named_parameters())["net.3.weight"].is_contiguous(memory_format=torch.channels_last)
    assert p.results.runtime["kernels"] == {"precision": "bf16", "channels_last": True, "compile": False}
    assert "precision" not in plan(ProbeConfig(**kw, out=str(tmp_path / "q.h5"))).results.config  # fp32: as before
    with one_thread():
        run_probe(cfg)
        with pytest.raises(UserError) as e:  # computed at bf16: fp32 is another setting
            run_probe(ProbeConfig(**kw, out=str(tmp_path / "p.h5")))
        one_line(e, "precision")
        run_probe(ProbeConfig(**kw, precision="bf16", out=str(tmp_path / "p.h5")))  # the same: resumes (done)
    assert Landscape.load(tmp_path / "p.h5").config["precision"] == "bf16"
    with pytest.raises(UserError) as e:
        ProbeConfig(**kw, precision="fp8")
    one_line(e, "fp8", "fp32, bf16, fp16")


# ---------------------------------------------------------------------------------------------
# --compile: works, or falls back with one warning
# ---------------------------------------------------------------------------------------------


def _tiny_model():
    torch.manual_seed(0)
    return create_model("smallcnn", 10, 1, (0.5,), (0.25,), widths=[4, 8, 8]).eval()


def test_compile_falls_back_with_one_warning_where_it_fails(monkeypatch):
    from torch._dynamo.exc import BackendCompilerFailed

    def failing(fn, *a, **kw):
        def call(*args, **kwargs):
            raise BackendCompilerFailed("inductor", RuntimeError("InvalidCxxCompiler: No working C++ compiler found"), None)
        return call

    monkeypatch.setattr(torch, "compile", failing)
    model, eager = _tiny_model(), _tiny_model()
    names = [n for n, _ in model.named_parameters()]
    Kernels(compile=True).prepare(model)
    x = torch.rand(8, 1, 8, 8)
    with pytest.warns(KernelWarning, match="--compile: torch.compile failed") as caught:
        with torch.no_grad():
            out = model(x)
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert "No working C++ compiler" in str(caught[0].message)
    assert model._compiled_call_impl is None  # uncompiled from now on
    torch.testing.assert_close(out, eager(x), rtol=0, atol=0)
    assert [n for n, _ in model.named_parameters()] == names
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        model(x)


def test_a_model_error_under_compile_is_the_models_own(monkeypatch):
    _eager_compile(monkeypatch)
    model = Kernels(compile=True).prepare(_tiny_model())
    with warnings.catch_warnings():
        warnings.simplefilter("error", KernelWarning)
        with pytest.raises(RuntimeError):  # a wrong input shape: no fallback warning hides it
            model(torch.rand(8, 3, 8, 8))


def test_cli_prints_a_kernel_warning_as_one_line(monkeypatch, capsys):
    import cli

    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # restored after the test
    cli._one_line_kernel_warnings()
    warnings.showwarning(KernelWarning("--compile: torch.compile failed here (X); running uncompiled"),
                         KernelWarning, "f.py", 1)
    assert capsys.readouterr().err == "warning: --compile: torch.compile failed here (X); running uncompiled\n"


@pytest.mark.skipif(not _has_cxx(), reason="torch.compile's CPU backend (inductor) needs a C++ compiler; none on PATH")
def test_compile_with_inductor():
    """One real compilation, of a tiny MLP (inductor on CPU: ~2 s with a warm inductor cache, ~13 s with
    an empty one, most of it inductor's one-time start; smallcnn's BatchNorm kernels would add ~8 s)."""
    def mlp():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10)).eval()

    model, eager = mlp(), mlp()
    names = [n for n, _ in model.named_parameters()]
    Kernels(compile=True).prepare(model)
    x = torch.rand(16, 1, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", KernelWarning)  # compiled, not fallen back
        with one_thread(), torch.no_grad():
            out = model(x)
    assert model._compiled_call_impl is not None
    assert [n for n, _ in model.named_parameters()] == names and list(model.state_dict()) == list(eager.state_dict())
    torch.testing.assert_close(out, eager(x), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# CUDA
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_each_option_on_cuda(precision, trained, digits_data, tmp_path):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        with pytest.raises(UserError):
            Kernels("bf16").check("cuda")
        return
    cfg = resolve_config({**TINY, "device": "cuda", "precision": precision, "channels_last": True, "epochs": 1})
    res = train(cfg, tmp_path / "r.h5")
    assert torch.isfinite(torch.as_tensor(res.metrics["fit_loss"])).all()
    model = Kernels(channels_last=True).prepare(copy.deepcopy(trained).cuda())
    attack = AttackConfig(eps=0.2, step_size=0.05, steps=10)
    ref = evaluate(trained, digits_data.test, attack, batch_size=500, device="cpu", seed=0)
    with Kernels(precision).autocast("cuda"):
        got = evaluate(model, digits_data.test, attack, batch_size=500, device="cuda", seed=0)
    assert abs(got["adv_loss"] - ref["adv_loss"]) <= BF16_LOSS_TOL
    assert abs(got["adv_acc"] - ref["adv_acc"]) <= BF16_ACC_TOL
