"""Training methods by name, one module each (registering itself in `METHODS`): at, natural, trades,
mart, rst, at-es. AWP is not a method but a switch of every run; "NAME-awp" labels NAME with AWP on."""

from awp.methods.base import (
    AWP_SUFFIX, METHODS, Adversary, Bound, Method, Param, choice, get_method, integer, merge_method_flags,
    method_flag_params, method_label, method_labels, number, param_flag, register_method, split_label, text,
)
from awp.methods.at import at_loss, pgd_ce_adversary
from awp.methods import natural, trades, mart, rst, at_es  # noqa: F401  (each registers itself)

__all__ = [
    "AWP_SUFFIX", "METHODS", "Adversary", "Bound", "Method", "Param", "at_loss", "choice", "get_method", "integer", "merge_method_flags", "method_flag_params",
    "method_label", "method_labels", "number", "param_flag", "pgd_ce_adversary", "register_method", "split_label", "text",
]
