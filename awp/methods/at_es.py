"""AT-ES (Rice et al. 2020): AT trained as usual, whose reported model is the epoch with the best robust
accuracy on a held-out validation split (early stopping); the last epoch is kept and reported beside it."""

from __future__ import annotations

from awp.methods.at import at_loss, pgd_ce_adversary
from awp.methods.base import Method, register_method

# Rice et al. hold out 1,000 of CIFAR-10's 50,000 training images (2%); on the digits default's 300
# training images that is 6, too few to choose an epoch, so the default split is 20% (60 images).
VAL_SPLIT = 0.2

AT_ES = register_method(Method(
    "at-es", pgd_ce_adversary, at_loss, selects="best_val", defaults={"val_split": VAL_SPLIT},
    summary="AT with early stopping on a validation split (Rice et al.)",
))
