"""Robustness evaluation as the field reports it (the paper's Tables 1-3): natural, FGSM, PGD-K, CW-inf and
AutoAttack, per example, with the worst case over attacks, resumable, and a RobustBench-style record."""

from awp.robustness.attacks import FAMILIES, EvalAttack, Threat, accepted_attacks, parse_attack, parse_attacks
from awp.robustness.run import PENDING, Evaluation, Tally, evaluate_model, run_evaluation

__all__ = ["FAMILIES", "EvalAttack", "Threat", "accepted_attacks", "parse_attack", "parse_attacks", "PENDING",
           "Evaluation", "Tally", "evaluate_model", "run_evaluation"]
