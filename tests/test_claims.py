"""The verdict logic of the demo's claims on synthetic inputs whose right verdict is known."""

from __future__ import annotations

import numpy as np
import pytest

from landscape.core import claims as cl
from landscape.core.claims import Checkpoint, Claim, Part, combine
from landscape.core.stats import CorrelationTest, Estimate, within_runs

RNG = np.random.default_rng(0)


def correct(p: float, n: int = 400, rng=RNG) -> np.ndarray:
    return (rng.random(n) < p).astype(float)


def flipped(base: np.ndarray, n_down: int = 0, n_up: int = 0, rng=RNG) -> np.ndarray:
    """`base` with n_down correct examples made wrong and n_up wrong ones made right (paired changes)."""
    out = base.copy()
    right, wrong = np.flatnonzero(base == 1), np.flatnonzero(base == 0)
    out[rng.choice(right, n_down, replace=False)] = 0
    out[rng.choice(wrong, n_up, replace=False)] = 1
    return out


def ckpt(epoch, train, test, sharp=(), se=0.0) -> Checkpoint:
    return Checkpoint(epoch, train, test, np.asarray(sharp, float), se)


def test_combine_is_a_conjunction_decided_by_the_weakest_part():
    assert combine(["holds", "holds"]) == "holds"
    assert combine(["holds", "not significant"]) == "not significant"
    assert combine(["not significant", "not measurable", "holds"]) == "not measurable"
    assert combine(["not measurable", "fails"]) == "fails"
    c = Claim("x", "t", [Part("a", Estimate(1, 0.5, 2), "", "holds"), Part("b", Estimate(0, -1, 1), "", "not significant")])
    assert c.status == "not significant" and c.deciding.what == "b"


def overfit_case(drop: int, train_rise: int, sharpen: float, directions: int = 5):
    test_b = correct(0.6)
    train_b = correct(0.6, 300)
    best = ckpt(40, train_b, test_b)
    last = ckpt(100, flipped(train_b, n_up=train_rise), flipped(test_b, n_down=drop))
    before = 1.0 + 0.02 * RNG.standard_normal(directions)
    return best, last, before, before + sharpen + 0.02 * RNG.standard_normal(directions)


def test_overfitting_holds_when_every_part_is_clear():
    best, last, before, after = overfit_case(drop=40, train_rise=40, sharpen=0.5)
    c = cl.overfitting(best, last, before, after, selection="chosen on other examples")
    assert c.status == "holds", c.evidence
    assert [p.status for p in c.parts] == ["holds"] * 3


def test_overfitting_not_significant_when_the_drop_is_noise():
    best, last, before, after = overfit_case(drop=1, train_rise=40, sharpen=0.5)
    c = cl.overfitting(best, last, before, after, selection="s")
    assert c.status == "not significant" and c.deciding.what.startswith("test robust acc best - last")


def test_overfitting_fails_when_the_landscape_flattens_or_the_best_is_last():
    best, last, before, after = overfit_case(drop=40, train_rise=40, sharpen=-0.5)
    assert cl.overfitting(best, last, before, after, selection="s").status == "fails"
    same = ckpt(100, best.train, best.test)
    c = cl.overfitting(same, same, before, np.zeros(0), selection="s")
    assert c.status == "fails" and "no fall" in str(c.parts[0])


def test_overfitting_not_measurable_without_a_checkpoint_after_the_best():
    best, last, before, _ = overfit_case(drop=40, train_rise=40, sharpen=0.5)
    c = cl.overfitting(best, last, before, np.zeros(0), selection="s")
    assert c.status == "not measurable" and "no probed checkpoint after" in str(c.parts[2])


def test_sharpening_interval_counts_example_noise():
    best, last, before, after = overfit_case(drop=40, train_rise=40, sharpen=0.05)
    assert cl.overfitting(best, last, before, after, selection="s").parts[2].status == "holds"
    noisy = cl.overfitting(best, last, before, after, selection="s", sharpness_se=0.2)
    assert noisy.parts[2].status == "not significant"


def test_awp_helps_verdicts():
    tr, te = correct(0.7, 300), correct(0.5)
    at = ckpt(100, tr, te, 1.0 + 0.02 * RNG.standard_normal(4))
    good = ckpt(100, flipped(tr, n_down=40), flipped(te, n_up=40), 0.5 + 0.02 * RNG.standard_normal(4))
    assert cl.awp_helps(at, good).status == "holds"
    same_acc = ckpt(100, flipped(tr, n_down=40), te, good.sharpness)
    c = cl.awp_helps(at, same_acc)
    assert c.status == "not significant" and c.deciding.what.startswith("last test robust acc")
    sharper = ckpt(100, good.train, good.test, 2.0 + 0.02 * RNG.standard_normal(4))
    assert cl.awp_helps(at, sharper).status == "fails"


def test_methods_flatter_verdicts_per_method():
    """(5): holds only when every method has both a smaller gap and a flatter landscape than AT; a method
    trained on other examples (AT-ES's validation split) is compared unpaired on the training side."""
    tr, te = correct(0.7, 300), correct(0.5)
    at = ckpt(100, tr, te, 1.0 + 0.02 * RNG.standard_normal(4))

    def better(n_train: int = 300):
        train = flipped(tr, n_down=60) if n_train == 300 else correct(0.5, n_train)
        return ckpt(100, train, flipped(te, n_up=20), 0.5 + 0.02 * RNG.standard_normal(4))

    c = cl.methods_flatter(at, {"trades": better(), "at-es": better(240)})
    assert c.status == "holds", c.evidence
    assert len(c.parts) == 4 and "independently" in c.parts[2].method
    sharper = ckpt(100, better().train, better().test, 2.0 + 0.02 * RNG.standard_normal(4))
    c = cl.methods_flatter(at, {"trades": better(), "mart": sharper})
    assert c.status == "fails" and c.deciding.what == "rise mart - AT"
    same = ckpt(100, tr, te, 0.5 + 0.02 * RNG.standard_normal(4))  # as flat, but the same gap
    c = cl.methods_flatter(at, {"rst": same})
    assert c.status == "not significant" and c.deciding.what == "gap rst - AT"
    assert cl.methods_flatter(at, {}).status == "not measurable"


def test_over_seeds_an_interval_is_never_narrower_than_the_seeds_own_noise():
    """Two seeds with the same estimate by chance (accuracies move in steps of 1/N) must not give an
    interval of width 0; on null data with quantized estimates the false-positive rate stays nominal,
    while a bare t interval over the seeds would exceed it."""
    part = lambda v: Part("gap x - AT", Estimate(v, v - 0.095, v + 0.095, 0.048), "m", "not significant", -1)
    c = cl.across_seeds([Claim("5", "t", [part(0.025)]), Claim("5", "t", [part(0.025)])])
    assert c.parts[0].status == "not significant" and c.parts[0].estimate.hi - c.parts[0].estimate.lo > 0.1
    from landscape.core.stats import seeds_interval, t_interval

    rng = np.random.default_rng(11)
    ours = bare = 0
    trials = 4000
    for _ in range(trials):
        v = np.round(rng.standard_normal(2) * 1.0)  # true effect 0, se 1, quantized to whole units
        e, b = seeds_interval(v, np.ones(2)), t_interval(v)
        ours += e.lo > 0 or e.hi < 0
        bare += b.lo > 0 or b.hi < 0
    assert ours / trials <= 0.06
    assert bare / trials > 0.1  # ties at a nonzero value: width 0, "significant"


def test_on_the_fly_above_fixed():
    alphas = np.linspace(-1, 1, 11)
    fixed = np.tile(alphas**2, (3, 1))
    fly = fixed + 0.3 * alphas**2 + 0.01 * RNG.standard_normal((3, 11))
    assert cl.on_the_fly_above_fixed(fly, fixed, alphas).status == "holds"
    assert cl.on_the_fly_above_fixed(fixed - 0.3 * alphas**2, fixed, alphas).status == "fails"
    split = fixed + np.array([[0.1], [-0.1], [0.0]])  # above along one direction, below along another
    assert cl.on_the_fly_above_fixed(split, fixed, alphas).status == "not significant"
    one = cl.on_the_fly_above_fixed(fly[:1], fixed[:1], alphas)
    assert one.status == "not measurable"  # one direction: no interval


def test_correlation_claims_follow_the_test():
    rng = np.random.default_rng(1)
    x = np.cumsum(rng.normal(size=12))
    coupled = [(x, x + 0.1 * np.cumsum(rng.normal(size=12))), (x[::-1], x[::-1] + 0.1 * rng.normal(size=12))]
    assert cl.within_epochs(within_runs(coupled)).status == "holds"
    anti = [(a, -b) for a, b in coupled]
    assert cl.within_epochs(within_runs(anti)).status == "fails"
    few = CorrelationTest("across runs", "m", "2 runs", 2, reason="2 runs; a test across runs needs at least 5")
    c = cl.across_runs(few)
    assert c.status == "not measurable" and "at least 5" in c.evidence


def test_across_seeds_uses_seeds_as_units():
    def seed(value):
        return Claim("3", "t", [cl.difference("d", Estimate(value, value - 0.01, value + 0.01), "m")])

    consistent = cl.across_seeds([seed(0.10), seed(0.11), seed(0.12)])
    assert consistent.status == "holds" and "t interval over seeds" in consistent.evidence
    # Each seed alone is significant, but they disagree: over seeds, nothing can be said.
    mixed = cl.across_seeds([seed(0.10), seed(-0.08), seed(0.02)])
    assert all(s.status != "not significant" for s in (seed(0.10), seed(-0.08)))
    assert mixed.status == "not significant"
    one = cl.across_seeds([seed(0.1), Claim("3", "t", [cl.unmeasurable("d", "no data")])])
    assert one.status == "not measurable"


@pytest.mark.parametrize("text,expected", [("0,1,2", (0, 1, 2)), ("7", (7,)), (" 3, 4 ", (3, 4))])
def test_parse_seeds(text, expected):
    from landscape.commands.demo import parse_seeds

    assert parse_seeds(text) == expected


@pytest.mark.parametrize("text,needle", [("1,1", "repeats"), ("a", "integers"), ("", "at least one"), ("-1", "--seeds")])
def test_parse_seeds_rejects(text, needle):
    from awp.errors import UserError
    from landscape.commands.demo import parse_seeds

    with pytest.raises(UserError, match=needle):
        parse_seeds(text)
