"""landscape: the weight-loss-landscape diagnostics engine (Eq. 5, Algorithm 1 of Wu, Xia, Wang 2020).

A library first: `probe_model` (1-D) and `plane_model` (2-D) take any `nn.Module` with inputs in
[0, 1] and any data, and return a `Landscape` (`.sharpness()`, `.save()`, `.plot()`, `.html()`,
`Landscape.load()`); `sharpness_model` computes the menu of robust sharpness measures (`MEASURES`).
Directions and sharpness measures are registries (`DIRECTIONS`, `SHARPNESS`, `MEASURES`).
"""

from awp import __version__  # one version for the whole toolkit
from awp.attacks import AttackConfig
from landscape.api import landscape_model, plane_model, probe_model, sharpness_model
from landscape.core.measures import MEASURES
from landscape.core.directions import DIRECTIONS
from landscape.core.sharpness import SHARPNESS
from landscape.storage.results import Grid, Landscape

__all__ = ["__version__", "AttackConfig", "DIRECTIONS", "Grid", "Landscape", "MEASURES", "SHARPNESS", "landscape_model",
           "plane_model", "probe_model", "sharpness_model"]
