"""Methods declare their parameters and AWP is a switch of any method: defaults filled, unknown names and
bad values refused in one line, values stored in the run file and handed to the loss; 'at-awp' still
names AT with AWP on, in flags, config files and run files written when it was a method of its own."""

from __future__ import annotations

import json
import math

import h5py
import pytest
import torch

from awp.errors import UserError
from awp.losses import LossOutput
from awp.methods import at_loss
from awp.methods import METHODS, Method, Param, get_method, method_label, method_labels, pgd_ce_adversary, register_method, split_label
from awp.runinfo import info_text
from awp.store import checkpoint_dict, open_run
from awp.train import train
from awp.trainconfig import TrainConfig, config_diff, format_toml, resolve_config, validate
from conftest import run_cli
from test_train import TINY, TINY_ARGS, assert_same_run

SEEN: list[float] = []  # the `scale` every call of the test loss received


def _scale(v) -> float:
    """A finite number >= 0 (bools refused): the test parameter's parser."""
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise TypeError(v)
    out = float(v)
    if not (math.isfinite(out) and out >= 0):
        raise ValueError(v)
    return out


def _scaled_loss(model, x, x_adv, y, *, scale: float) -> LossOutput:
    """AT's loss times `scale`, recording the value it was given."""
    SEEN.append(scale)
    out = at_loss(model, x, x_adv, y)
    return LossOutput(out.loss * scale, out.logits_adv)


SCALED = Method("test-scaled", pgd_ce_adversary, _scaled_loss, summary="test only: AT's loss times scale",
                params=(Param("scale", 1.0, _scale, "a finite number >= 0", "factor on AT's loss"),))


@pytest.fixture
def scaled():
    register_method(SCALED)
    SEEN.clear()
    try:
        yield SCALED
    finally:
        METHODS.unregister(SCALED.name)


def _one_line(e: pytest.ExceptionInfo, *needles: str) -> None:
    msg = str(e.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, (n, msg)


# ---------------------------------------------------------------------------------------------
# Declared parameters
# ---------------------------------------------------------------------------------------------


def test_defaults_are_filled_and_given_values_parsed(scaled):
    assert resolve_config({"method": "test-scaled"}).method_params == {"scale": 1.0}
    assert resolve_config({"method": "test-scaled", "method_params": '{"scale": "0.5"}'}).method_params == {"scale": 0.5}
    assert resolve_config({"method": "at"}).method_params == {}
    assert scaled.kwargs({}) == {"scale": 1.0}


@pytest.mark.parametrize("params,needles", [
    ('{"sclae": 2}', ("--method-params", "method 'test-scaled' has no parameter 'sclae'", "accepted: scale")),
    ('{"scale": "x"}', ("--method-params", "parameter 'scale' of method 'test-scaled'", "a finite number >= 0", "'x'")),
    ('{"scale": -1}', ("parameter 'scale'", "a finite number >= 0", "-1")),
    ('{"scale": true}', ("parameter 'scale'", "True")),
    ('[1]', ("--method-params must be a table/JSON object",)),
    ('{bad', ("--method-params must be a JSON object",)),
])
def test_unknown_names_and_bad_values_are_one_line(scaled, params, needles):
    with pytest.raises(UserError) as e:
        resolve_config({"method": "test-scaled", "method_params": params})
    _one_line(e, *needles)


def test_a_method_without_parameters_refuses_any():
    with pytest.raises(UserError) as e:
        resolve_config({"method": "at", "method_params": '{"beta": 6}'})
    _one_line(e, "method 'at' has no parameter 'beta'; accepted: none")
    with pytest.raises(UserError) as e:  # a config built by hand goes through the same check
        validate(TrainConfig(dataset="digits", arch="smallcnn", method_params={"beta": 6}))
    _one_line(e, "--method-params", "'beta'")


def test_registration_refuses_awp_labels_bad_parameter_names_and_bad_defaults():
    p = Param("scale", 1.0, _scale, "a finite number >= 0", "")
    for bad in (Method("x-awp", pgd_ce_adversary, at_loss, "s"), Method("x", pgd_ce_adversary, at_loss, "s", (p, p)),
                Method("x", pgd_ce_adversary, at_loss, "s", (Param("a-b", 1.0, _scale, "a finite number >= 0", ""),)),
                Method("x", pgd_ce_adversary, at_loss, "s", (Param("scale", -1.0, _scale, "a finite number >= 0", ""),))):
        with pytest.raises(ValueError):
            register_method(bad)
    assert "x" not in METHODS and "x-awp" not in METHODS


def test_toml_table_and_json_flag_set_the_same_parameters(scaled, tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('method = "test-scaled"\nmethod-params = {scale = 0.25}\n')
    cfg = resolve_config({}, f)
    assert cfg.method_params == {"scale": 0.25} and "method_params = {scale = 0.25}" in format_toml(cfg)
    assert cfg == resolve_config({"method": "test-scaled", "method_params": '{"scale": 0.25}'})
    again = tmp_path / "again.toml"
    again.write_text(format_toml(cfg))  # the printed config is a valid --config file
    assert resolve_config({}, again) == cfg
    assert resolve_config({"method_params": '{"scale": 2}'}, f).method_params == {"scale": 2.0}  # flags win
    assert config_diff(cfg, resolve_config({}, again)) == []


def test_values_are_stored_read_back_and_handed_to_the_loss(scaled, tmp_path):
    cfg = resolve_config({**TINY, "method": "test-scaled", "method_params": '{"scale": 0.5}', "awp": True,
                          "gamma": 0.01, "epochs": 1})
    out = tmp_path / "r.h5"
    train(cfg, out)
    # 3 steps, each one call in AWP's ascent (Eq. 10, K2 = 1) and one for the update (Eq. 11): all got it
    assert SEEN == [0.5] * 6
    r = open_run(out)
    assert r.config["method_params"] == {"scale": 0.5} and r.config["use_awp"] is True
    assert r.train_config() == cfg and r.train_config().label == "test-scaled-awp"
    assert "method_params = {scale = 0.5}" in info_text(r) and "method     test-scaled-awp" in info_text(r)
    assert json.loads(checkpoint_dict(r, 1)["config_json"])["method_params"] == {"scale": 0.5}
    stored = resolve_config({}, stored=r.config)  # resuming with no options takes the stored ones
    assert stored == cfg
    other = resolve_config({"method_params": '{"scale": 1}'}, stored=r.config)
    assert config_diff(r.train_config(), other) == ["method_params"]  # resuming with another value is refused


def test_the_parameter_changes_the_run(scaled, tmp_path):
    flags = {**TINY, "method": "test-scaled", "epochs": 1}
    one = open_run(train(resolve_config(flags), tmp_path / "one.h5").path).state_dict(1)
    half = open_run(train(resolve_config({**flags, "method_params": '{"scale": 0.5}'}), tmp_path / "half.h5").path).state_dict(1)
    assert not torch.equal(one["net.0.weight"], half["net.0.weight"])  # half the gradient: other weights


# ---------------------------------------------------------------------------------------------
# AWP as a switch; the label at-awp
# ---------------------------------------------------------------------------------------------


def test_at_awp_is_at_with_awp_on(tmp_path):
    awp = resolve_config({"method": "at-awp"})
    assert (awp.method, awp.use_awp, awp.label) == ("at", True, "at-awp")
    assert awp == resolve_config({"method": "at", "awp": True}) and awp == resolve_config({"method": "at-awp", "awp": "true"})
    plain = resolve_config({})
    assert (plain.method, plain.use_awp, plain.label) == ("at", False, "at")
    assert (split_label("at-awp"), split_label("at"), method_label("at", True)) == (("at", True), ("at", False), "at-awp")
    assert method_labels()[:2] == ("at", "at-awp") and "at" in METHODS.names() and "at-awp" not in METHODS.names()
    assert get_method("at-awp") is get_method("at")
    f = tmp_path / "c.toml"
    f.write_text('method = "at-awp"\n')
    assert resolve_config({}, f) == awp
    assert resolve_config({"awp": False}, f) == plain  # a flag overrides what the file's label switched on
    f.write_text('awp = true\n')
    assert resolve_config({"method": "at"}, f) == awp  # --method sets the method only


def test_at_awp_contradicted_in_one_source_and_labels_in_hand_built_configs():
    with pytest.raises(UserError) as e:
        resolve_config({"method": "at-awp", "awp": False})
    _one_line(e, "--method at-awp", "--no-awp")
    with pytest.raises(UserError) as e:  # TrainConfig(method="at-awp") would train plain AT: refused
        validate(TrainConfig(dataset="digits", arch="smallcnn", method="at-awp"))
    _one_line(e, "--method 'at-awp' is a label, not a method", "'at'", "use_awp=True")
    with pytest.raises(UserError) as e:
        resolve_config({"method": "madry-awp"})
    _one_line(e, "unknown method 'madry-awp'; accepted: at, at-awp, natural, natural-awp, trades, trades-awp")


def test_cli_flags(tmp_path):
    r = run_cli("train-awp", "-o", str(tmp_path / "r.h5"), "--method-params", '{"beta": 6}', *TINY_ARGS)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: --method-params: method 'at' has no parameter 'beta'; accepted: none"]
    r = run_cli("train-awp", "-o", str(tmp_path / "r.h5"), "--method", "at-awp", "--no-awp", *TINY_ARGS)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--no-awp" in r.stderr
    assert not (tmp_path / "r.h5").exists()
    r = run_cli("train-awp", "--awp", "--epochs", "1", "--train-size", "20", "--train-eval-size", "10", "--test-size", "10",
                "--train-steps", "1", "--eval-steps", "1", "--batch-size", "20", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert open_run(tmp_path / "runs" / "digits-at-awp.h5").train_config().label == "at-awp"  # the default --out


# ---------------------------------------------------------------------------------------------
# Run files written when AT-AWP was a method of its own
# ---------------------------------------------------------------------------------------------


class _StopAfterFirstEpoch(Exception):
    pass


class _Stopper:
    """A reporter that stops training once the first epoch is committed (as a crash would)."""

    def message(self, text): ...
    def epoch_start(self, epoch, epochs, steps): ...
    def step(self, step, steps, loss): ...
    def close(self): ...

    def epoch_end(self, epoch, epochs, row, best_epoch):
        raise _StopAfterFirstEpoch


def _as_old_run_file(path) -> dict:
    """Rewrite the stored config as the version before method parameters and the AWP switch wrote it."""
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["config"])
        awp = config.pop("use_awp")
        del config["method_params"]
        config["method"] = method_label(config["method"], awp)
        f.attrs["config"] = json.dumps(config, sort_keys=True)
    return config


def test_an_old_at_awp_run_file_opens_resumes_and_exports(tmp_path):
    flags = {**TINY, "method": "at-awp", "awp_warmup": 1, "epochs": 3}
    train(resolve_config(flags), tmp_path / "full.h5")
    old = tmp_path / "old.h5"
    with pytest.raises(_StopAfterFirstEpoch):
        train(resolve_config(flags), old, reporter=_Stopper())
    stored = _as_old_run_file(old)
    assert stored["method"] == "at-awp" and "use_awp" not in stored
    cfg = open_run(old).train_config()
    assert (cfg.method, cfg.use_awp, cfg.method_params, cfg.label) == ("at", True, {}, "at-awp")
    assert cfg == resolve_config(flags)
    r = run_cli("info", str(old))
    assert r.returncode == 0 and "method     at-awp\n" in r.stdout and "awp = true\n" in r.stdout, r.stderr
    r = run_cli("train-awp", "-o", str(old), "--resume", "--quiet", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert_same_run(tmp_path / "full.h5", old)  # resumed under the new names: bitwise the uninterrupted run
    assert open_run(old).config["method"] == "at-awp"  # the stored config is kept as it was written
    r = run_cli("export", str(old), "--epoch", "last", "-o", str(tmp_path / "m.pt"))
    assert r.returncode == 0, r.stderr
    r = run_cli("train-awp", "-o", str(old), "--resume", "--no-awp", "--quiet")  # AWP off is another run
    assert r.returncode == 2 and "config differs in awp (run: True, now: False)" in r.stderr


def test_an_old_at_run_file_reads_as_at_without_awp():
    d = resolve_config({}).to_dict()
    del d["use_awp"], d["method_params"]
    cfg = TrainConfig.from_dict(d)
    assert (cfg.method, cfg.use_awp, cfg.method_params) == ("at", False, {}) and cfg == resolve_config({})
