"""landscape: the weight-loss-landscape diagnostics engine (Eq. 5, Algorithm 1 of Wu, Xia, Wang 2020)."""

from awp import __version__  # one version for the whole toolkit

__all__ = ["__version__"]
