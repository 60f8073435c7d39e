"""`landscape eval`: the attacks' ordering and conventions on a trained smallcnn, resumption, AutoAttack
(when the extra is installed), the interval's coverage, and the JSON against a schema."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from awp.data import class_stratified_subset
from awp.errors import UserError
from awp.robustness import Evaluation, Threat, parse_attacks, run_evaluation
from awp.robustness import autoattack
from awp.robustness import run as run_module
from awp.robustness.record import interval
from tests.conftest import run_cli

EPS = 0.1  # half the fixture's training radius: robust accuracy well away from 0 and 1


@pytest.fixture(scope="module")
def test_subset(digits):
    return class_stratified_subset(digits.test, 300, 0)


def evaluate(model, ds, names: str, *, eps=EPS, restarts=1, seed=0, batch_size=100, **kw) -> dict[str, np.ndarray]:
    ev = Evaluation(parse_attacks(names), Threat(eps=eps, step_size=eps / 4, restarts=restarts, **kw))
    assert run_evaluation(model, ds, ev, batch_size=batch_size, seed=seed, device="cpu")
    out = {a.name: ev.tallies[a.name].robust.copy() for a in ev.attacks}
    out["overall"] = ev.overall()
    return out


def test_attacks_weaken_in_order_and_the_worst_case_is_below_each(trained_smallcnn, test_subset):
    r = evaluate(trained_smallcnn, test_subset, "natural,fgsm,pgd20,pgd100,cw")
    acc = {k: float(v.mean()) for k, v in r.items()}
    assert 0.1 < acc["pgd20"] < acc["natural"] - 0.1  # a model with something to attack
    tol = 0.02  # different random starts: pgd100 may keep an example pgd20 took
    assert acc["natural"] >= acc["fgsm"] >= acc["pgd20"] - tol >= acc["pgd100"] - 2 * tol
    for name in ("natural", "fgsm", "pgd20", "pgd100", "cw"):
        assert (r["overall"] <= r[name]).all()  # per example, not only on average
        assert (r[name] <= r["natural"]).all()  # robust needs clean-correct (AutoAttack's convention)
    assert acc["overall"] < min(acc[n] for n in ("fgsm", "pgd20", "pgd100", "cw")) + 1e-12


def test_library_form_matches_the_pieces(trained_smallcnn, test_subset):
    from awp.robustness import evaluate_model

    ev = evaluate_model(trained_smallcnn, test_subset, "natural,pgd5", eps=EPS, batch_size=100)
    np.testing.assert_array_equal(ev.overall(), evaluate(trained_smallcnn, test_subset, "natural,pgd5")["overall"])


def test_restarts_never_raise_robust_accuracy(trained_smallcnn, test_subset):
    one = evaluate(trained_smallcnn, test_subset, "pgd5", restarts=1)["pgd5"]
    three = evaluate(trained_smallcnn, test_subset, "pgd5", restarts=3)["pgd5"]
    assert (three <= one).all()
    assert three.sum() < one.sum()  # and here they find more


def test_eps_zero_gives_natural_accuracy_for_every_attack(trained_smallcnn, test_subset):
    r = evaluate(trained_smallcnn, test_subset, "natural,fgsm,pgd10,cw10", eps=0.0)
    for name in ("fgsm", "pgd10", "cw10", "overall"):
        np.testing.assert_array_equal(r[name], r["natural"])


def test_an_interrupted_evaluation_resumes_to_the_same_numbers(trained_smallcnn, test_subset, monkeypatch):
    straight = evaluate(trained_smallcnn, test_subset, "pgd10,cw10", batch_size=50)
    ev = Evaluation(parse_attacks("pgd10,cw10"), Threat(eps=EPS, step_size=EPS / 4))
    calls = iter(range(100))
    monkeypatch.setattr(run_module, "stop_requested", lambda: next(calls) == 8)  # Ctrl-C during cw10
    saved = []
    assert not run_evaluation(trained_smallcnn, test_subset, ev, batch_size=50, seed=0, device="cpu",
                              save=lambda: saved.append(1))
    assert saved and not ev.tallies["cw10"].complete and ev.tallies["pgd10"].complete
    monkeypatch.setattr(run_module, "stop_requested", lambda: False)
    assert run_evaluation(trained_smallcnn, test_subset, ev, batch_size=50, seed=0, device="cpu")
    for name in ("pgd10", "cw10"):
        np.testing.assert_array_equal(ev.tallies[name].robust, straight[name])


@pytest.mark.skipif(not autoattack.available(), reason="AutoAttack needs the extra: pip install 'awp-landscape[autoattack]'")
def test_autoattack_runs_and_joins_the_worst_case(trained_smallcnn, digits, monkeypatch):
    import pyautoattack

    real = pyautoattack.AutoAttack._set_version

    def shorter(self, version="standard"):  # the reference's four attacks, each with fewer iterations:
        real(self, version)  # its path in seconds instead of 20 s of APGD-T, FAB-T and Square's 5,000 queries
        self.apgd.n_iter = self.apgd_targeted.n_iter = self.fab.n_iter = 10
        self.square.n_queries = 100

    monkeypatch.setattr(pyautoattack.AutoAttack, "_set_version", shorter)
    ds = class_stratified_subset(digits.test, 40, 0)
    r = evaluate(trained_smallcnn, ds, "natural,pgd20,autoattack", batch_size=40, eps=0.2)
    assert 0 < r["autoattack"].sum() < r["natural"].sum()  # survivors reached the later attacks
    assert (r["autoattack"] <= r["natural"]).all()
    assert r["autoattack"].mean() <= r["pgd20"].mean() + 0.05  # the stronger attack, up to a few examples
    assert (r["overall"] == np.minimum(r["pgd20"], r["autoattack"])).all()


def test_autoattack_without_the_extra_says_how_to_install(monkeypatch):
    monkeypatch.setattr(autoattack, "available", lambda: False)
    with pytest.raises(UserError, match=r"pip install 'awp-landscape\[autoattack\]'"):
        autoattack.require()


def test_the_wilson_interval_covers_at_its_level_where_nothing_is_there():
    """95% intervals over examples drawn independently: they miss the true accuracy about 5% of the time."""
    rng = np.random.default_rng(0)
    for p, n in ((0.5, 200), (0.1, 100), (0.02, 500)):
        misses = 0
        for _ in range(1000):
            lo, hi = interval((rng.random(n) < p).astype(np.int8))
            misses += not lo <= p <= hi
        assert 0.02 <= misses / 1000 <= 0.08, (p, n, misses)


SCHEMA = {
    "type": "object",
    "required": ["format", "format_version", "evaluations", "per_example_results"],
    "properties": {
        "format": {"const": "awp-landscape-eval"},
        "evaluations": {"type": "array", "minItems": 1, "items": {
            "type": "object",
            "required": ["dataset", "threat_model", "eps", "clean_acc", "robust_acc", "n_examples", "attacks", "robust",
                         "settings", "checkpoint", "versions"],
            "properties": {
                "threat_model": {"enum": ["Linf", "L2"]},
                "eps": {"type": "string", "pattern": r"^(\d+/255|[0-9.e-]+)$"},
                "clean_acc": {"type": "string", "pattern": r"^\d{1,3}\.\d\d$"},
                "robust_acc": {"type": "string", "pattern": r"^\d{1,3}\.\d\d$"},
                "n_examples": {"type": "integer", "minimum": 1},
                "checkpoint": {"type": "object", "required": ["path", "epoch", "sha256"],
                               "properties": {"sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}},
                "settings": {"type": "object", "required": ["seed", "samples", "norm", "eps", "step_size", "restarts"]},
                "versions": {"type": "object", "required": ["awp", "torch"]},
                "attacks": {"type": "object", "minProperties": 1, "additionalProperties": {
                    "type": "object", "required": ["accuracy", "ci95", "n", "seconds", "settings"],
                    "properties": {"accuracy": {"type": "number", "minimum": 0, "maximum": 1},
                                   "ci95": {"type": "array", "minItems": 2, "maxItems": 2},
                                   "seconds": {"type": "number", "minimum": 0}}}},
            },
        }},
    },
}


def test_cli_writes_json_that_fits_the_schema_and_records_the_run(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    run = tmp_path / "run.h5"
    r = run_cli("train-awp", "--epochs", "2", "--train-size", "60", "--test-size", "60", "--train-eval-size", "20",
                "--train-steps", "2", "--eval-steps", "2", "-q", "-o", str(run), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run_cli("eval", str(run), "--attacks", "fgsm,pgd5", "--samples", "40", "--epoch", "all", "-q",
                "-o", str(tmp_path / "ev.json"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "ev.json").read_text())
    jsonschema.validate(doc, SCHEMA)
    assert [e["checkpoint"]["epoch"] for e in doc["evaluations"]] == [1, 2]
    assert list(doc["evaluations"][0]["attacks"]) == ["natural", "fgsm", "pgd5"]
    info = run_cli("info", str(run), cwd=tmp_path).stdout
    assert "robustness evaluations" in info and "pgd5" in info and "worst case" in info
    wrong = dict(SCHEMA, properties={**SCHEMA["properties"], "format": {"const": "something-else"}})
    with pytest.raises(jsonschema.ValidationError):  # the schema can fail
        jsonschema.validate(doc, wrong)
