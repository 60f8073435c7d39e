"""awp: the bundled adversarial trainer (AT, AT-AWP and friends) of Wu, Xia, Wang (NeurIPS 2020)."""

__version__ = "0.1.0"
