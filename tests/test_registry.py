"""One registry mechanism: lookup errors, duplicate policy, choices; and every named choice uses it."""

from __future__ import annotations

import pytest

from awp.errors import UserError
from awp.registry import Registry


def test_lookup_register_and_names():
    reg: Registry[int] = Registry("colour", {"red": 1})

    @reg.register("green")
    def green():  # a decorator returns what it registers
        return 2

    assert reg.lookup("red") == 1 and reg.lookup("green") is green
    assert reg.names() == ("red", "green") and list(reg) == ["red", "green"] and len(reg) == 2
    with pytest.raises(UserError, match=r"unknown colour 'blue'; accepted: red, green$"):
        reg.lookup("blue")
    with pytest.raises(UserError, match="unknown colour 3"):
        reg.lookup(3)  # not a name at all
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("red", 5)
    assert reg.lookup("red") == 1  # the first entry stays
    reg.unregister("green")
    assert "green" not in reg


def test_choices_are_a_str_enum_of_the_names():
    reg = Registry("mode", {"eval": 0, "recalibrate": 1})
    enum = reg.choices("Mode")
    assert [m.value for m in enum] == ["eval", "recalibrate"] and enum("eval") == "eval"


def test_every_named_choice_is_a_registry():
    from awp.attacks import L2_STARTS, NORMS
    from awp.data import DATASETS
    from awp.methods import METHODS, method_labels
    from awp.models.registry import MODELS
    from awp.schedules import SCHEDULES
    from awp.trainconfig import CLEAN_PASSES
    from landscape.core.directions import NORMALIZATIONS
    from landscape.core.directions import DIRECTIONS
    from landscape.core.engine import BN_MODES
    from landscape.core.sharpness import SHARPNESS

    # AWP is an option of any method, not a second entry: every method once, followed by its AWP label
    assert method_labels() == tuple(label for m in METHODS for label in (m, m + "-awp"))
    assert set(METHODS) == {"at", "natural", "trades", "mart", "rst", "at-es"}
    for reg in (L2_STARTS, NORMS, DATASETS, METHODS, MODELS, SCHEDULES, CLEAN_PASSES, NORMALIZATIONS, BN_MODES,
                DIRECTIONS, SHARPNESS):
        assert isinstance(reg, Registry) and len(reg) >= (1 if reg is METHODS else 2), reg
        with pytest.raises(UserError, match="accepted: " + ", ".join(reg.names())):
            reg.lookup("no-such-name")
