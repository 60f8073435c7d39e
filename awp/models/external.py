"""Models from outside the registry: a `MODULE:CALLABLE` import spec, or a RobustBench zoo entry.

Unlike registry models these are not wrapped in our `Normalize`: they take pixels in [0, 1] and do
their own input normalization, so the dataset's mean/std are not applied to them.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import json
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from awp.errors import UserError

ROBUSTBENCH_PREFIX = "robustbench:"
EXTERNAL_FORMS = "MODULE:CALLABLE (an importable callable returning an nn.Module), or robustbench:NAME"
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def options_text(kwargs: dict[str, Any]) -> str:
    """The model options as the user wrote them (JSON), for error messages."""
    try:
        return json.dumps(kwargs, sort_keys=True)
    except (TypeError, ValueError):
        return repr(kwargs)


def error_text(e: BaseException) -> str:
    """`Type: message` on one line (torch and importlib messages may span several)."""
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def is_import_spec(name: str) -> bool:
    """True for `MODULE:CALLABLE` (any name with a ':' other than `robustbench:NAME`)."""
    return ":" in name and not name.startswith(ROBUSTBENCH_PREFIX)


def resolve_callable(spec: str) -> Any:
    """The object `MODULE:ATTR[.ATTR...]` names (imported, not yet called); every failure is one line."""
    module_name, _, attr_path = spec.partition(":")
    if not (_DOTTED.match(module_name) and _DOTTED.match(attr_path)):
        raise UserError(f"model {spec!r} is not of the form MODULE:CALLABLE (e.g. mypkg.nets:WideResNet); "
                        f"accepted: a registered model name, {EXTERNAL_FORMS}")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:  # the user's module failed to import, whatever it raised: nothing to build
        raise UserError(f"model {spec!r}: module {module_name!r} does not import ({error_text(e)}); "
                        f"is it installed or on PYTHONPATH?") from None
    for i, attr in enumerate(attr_path.split(".")):
        owner = ".".join([module_name, *attr_path.split(".")[:i]])
        if not hasattr(obj, attr):
            public = sorted(n for n, v in vars(obj).items() if callable(v) and not n.startswith("_"))[:8]
            has = f"; it has {', '.join(public)}" if public else ""
            raise UserError(f"model {spec!r}: {owner!r} has no attribute {attr!r}{has}")
        obj = getattr(obj, attr)
    if not callable(obj):
        raise UserError(f"model {spec!r} names an object of type {type(obj).__name__}, not a callable that "
                        f"returns an nn.Module")
    return obj


def build_from_spec(spec: str, kwargs: dict[str, Any]) -> nn.Module:
    """Import `MODULE:CALLABLE` and call it with `kwargs` only; it must return an `nn.Module` that takes
    pixels in [0, 1] (it normalizes its inputs itself: no `Normalize` layer is added)."""
    fn = resolve_callable(spec)
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as e:  # an option the callable does not take, or a required one missing
        raise UserError(f"model {spec!r} rejects options {options_text(kwargs)}: {e}") from None
    except ValueError:
        pass  # no introspectable signature (a builtin): the call below reports any mismatch
    try:
        model = fn(**kwargs)
    except UserError as e:
        raise UserError(f"model {spec!r} with options {options_text(kwargs)}: {e}") from None
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        raise UserError(f"model {spec!r} cannot be built with options {options_text(kwargs)}: {error_text(e)}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model {spec!r} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def check_model_output(model: nn.Module, name: str, num_classes: int, input_shape: tuple[int, ...]) -> None:
    """One forward pass on zeros of `input_shape` ([C, H, W]) in eval mode: the model must accept the
    data and give [N, num_classes] logits. For models whose builder never saw the dataset (import specs)."""
    params = [*model.parameters(), *model.buffers()]
    device = params[0].device if params else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *input_shape, device=device))
    except (TypeError, ValueError, RuntimeError, IndexError) as e:
        raise UserError(f"model {name!r} fails on inputs of shape {[2, *input_shape]}: {error_text(e)}") from None
    finally:
        model.train(was_training)
    shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape != [2, num_classes]:
        raise UserError(f"model {name!r} gives {shape} for inputs of shape {[2, *input_shape]}; "
                        f"the data has {num_classes} classes, so [2, {num_classes}] logits are needed")


# ---------------------------------------------------------------------------------------------
# RobustBench (optional: pip install 'awp-landscape[robustbench]')
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZooInfo:
    """What a caller needs to feed a zoo model: its classes and the [C, H, W] pixels in [0, 1] it takes."""

    num_classes: int
    input_shape: tuple[int, int, int]


ROBUSTBENCH_DATASETS = {
    "cifar10": ZooInfo(10, (3, 32, 32)),
    "cifar100": ZooInfo(100, (3, 32, 32)),
    "imagenet": ZooInfo(1000, (3, 224, 224)),  # after the entry's own resize-and-crop preprocessing
}
ROBUSTBENCH_THREATS = ("Linf", "L2", "corruptions")
ROBUSTBENCH_OPTIONS = ("dataset", "threat_model", "model_dir")
INSTALL_HINT = "pip install 'awp-landscape[robustbench]'"
# Zoo classes that combine several networks (mixtures, composites, ensembles); the zoo lists most of
# them with several checkpoints, which is caught before anything is downloaded.
ROBUSTBENCH_COMPOSITES = frozenset({
    "CompositeModel", "CompositeModelWrapper", "NonLinMixedClassifier",
    "Chen2020AdversarialNet", "Diffenderfer2021CARD_Deck", "Diffenderfer2021CARD_Deck_Binary",
})


def robustbench_info(dataset: str) -> ZooInfo:
    """Classes and input shape of the RobustBench models of `dataset` (cifar10, cifar100, imagenet)."""
    return ROBUSTBENCH_DATASETS[_zoo_dataset(dataset)]


def _zoo_dataset(dataset: str) -> str:
    if dataset not in ROBUSTBENCH_DATASETS:
        raise UserError(f"RobustBench dataset {dataset!r} unknown; accepted: {', '.join(ROBUSTBENCH_DATASETS)}")
    return dataset


def _zoo_threat(threat_model: str) -> str:
    """`Linf`, `L2` or `corruptions`, also written in lower case (our norms are `linf`, `l2`)."""
    by_lower = {t.lower(): t for t in ROBUSTBENCH_THREATS}
    if not isinstance(threat_model, str) or threat_model.lower() not in by_lower:
        raise UserError(f"RobustBench threat model {threat_model!r} unknown; accepted: {', '.join(ROBUSTBENCH_THREATS)}")
    return by_lower[threat_model.lower()]


def _import_robustbench() -> tuple[Any, Any]:
    """`robustbench.utils` and the zoo (`model_dicts`); absent, one line saying how to install it.
    robustbench 1.1.1 from PyPI imports `autoattack`, which its dependency `pyautoattack` installs as
    `pyautoattack`: that alias is the one thing added to sys.modules here."""
    if importlib.util.find_spec("robustbench") is None:
        raise UserError(f"robustbench models need the optional package robustbench: {INSTALL_HINT}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation noise from torch.jit and timm at import
        try:
            if importlib.util.find_spec("autoattack") is None and importlib.util.find_spec("pyautoattack") is not None:
                import pyautoattack
                import pyautoattack.state

                sys.modules["autoattack"], sys.modules["autoattack.state"] = pyautoattack, pyautoattack.state
            import robustbench.utils
            from robustbench.model_zoo import model_dicts
        except ImportError as e:
            raise UserError(f"robustbench is installed but does not import ({error_text(e)}); "
                            f"reinstall it with {INSTALL_HINT}") from None
    return robustbench.utils, model_dicts


def _zoo_entries(model_dicts: Any, dataset: str, threat: str) -> dict[str, Any]:
    """The zoo's entries for (dataset, threat model), keyed by model name."""
    for ds, threats in model_dicts.items():
        if getattr(ds, "value", ds) == dataset:
            for tm, entries in threats.items():
                if getattr(tm, "value", tm) == threat:
                    return dict(entries)
    return {}


def _check_deterministic(model: nn.Module, label: str, info: ZooInfo) -> None:
    """Refuse a randomized defense: two eval-mode forward passes on one input must agree bit for bit
    (checked on the CPU, where a deterministic network always does) and give [N, classes] logits."""
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        return  # a shapes-only skeleton (a preflight check): nothing to run
    x = torch.rand(2, *info.input_shape, generator=torch.Generator().manual_seed(0))
    model.eval()
    try:
        with torch.no_grad():
            a, b = model(x), model(x)
    except (TypeError, ValueError, RuntimeError, IndexError) as e:
        raise UserError(f"{label} fails on inputs of shape {[2, *info.input_shape]}: {error_text(e)}") from None
    if not isinstance(a, torch.Tensor) or tuple(a.shape) != (2, info.num_classes):
        got = list(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
        raise UserError(f"{label} gives {got} for inputs {[2, *info.input_shape]}, not [2, {info.num_classes}] logits")
    if not torch.equal(a, b):
        diff = float((a - b).abs().max())
        raise UserError(f"{label} is refused: two eval-mode forward passes on the same input differ (max |diff| "
                        f"{diff:.3g}), so it is a randomized defense and its loss landscape is not one function")


def load_robustbench(name: str, dataset: str, threat_model: str, model_dir: str | Path = "models") -> nn.Module:
    """RobustBench zoo model `name` for (dataset, threat model) in eval mode on the CPU, through
    `robustbench.utils.load_model`: its checkpoint is read from `model_dir/dataset/threat_model/name.pt`,
    downloaded there when absent. Ensembles and randomized defenses are refused (one network only)."""
    dataset, threat = _zoo_dataset(dataset), _zoo_threat(threat_model)
    label = f"RobustBench model {name!r} ({dataset}, {threat})"
    utils, model_dicts = _import_robustbench()
    entries = _zoo_entries(model_dicts, dataset, threat)
    if name not in entries:
        close = difflib.get_close_matches(name, list(entries), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UserError(f"unknown RobustBench model {name!r} for {dataset} {threat}; {hint}"
                        f"accepted: one of the {len(entries)} names of its zoo (robustbench.github.io)")
    checkpoints = entries[name].get("gdrive_id")
    if isinstance(checkpoints, (list, tuple)):
        raise UserError(f"{label} is refused: it combines {len(checkpoints)} networks (an ensemble or mixture), "
                        f"and a weight loss landscape needs one network")
    path = Path(model_dir) / dataset / threat / f"{name}.pt"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = utils.load_model(model_name=name, dataset=dataset, threat_model=threat, model_dir=str(model_dir))
    except KeyError:  # robustbench's own "not in the zoo" (a zoo that changed under us)
        raise UserError(f"unknown RobustBench model {name!r} for {dataset} {threat}") from None
    except Exception as e:  # foreign code: a failed download, an unreadable or mismatched checkpoint
        where = (f"offline, put its checkpoint at {str(path)!r}" if checkpoints is not None else
                 "its weights come from the Hugging Face hub through timm (online, or from a filled hub cache)")
        raise UserError(f"{label} did not load ({error_text(e)}); {where}") from None
    composite = sorted({type(m).__name__ for m in model.modules()} & ROBUSTBENCH_COMPOSITES)
    if composite:
        raise UserError(f"{label} is refused: it is a {composite[0]}, which combines several networks")
    _check_deterministic(model, label, ROBUSTBENCH_DATASETS[dataset])
    return model.eval()


def build_robustbench(spec: str, kwargs: dict[str, Any]) -> nn.Module:
    """`robustbench:NAME` with options {"dataset": ..., "threat_model": ..., "model_dir": ...} (no others)."""
    name = spec[len(ROBUSTBENCH_PREFIX):]
    unknown = sorted(set(kwargs) - set(ROBUSTBENCH_OPTIONS))
    missing = [k for k in ROBUSTBENCH_OPTIONS[:2] if k not in kwargs]
    if not name or unknown or missing:
        what = (f"unknown option(s) {', '.join(unknown)}" if unknown else
                f"missing {' and '.join(missing)}" if missing else "no model name")
        raise UserError(f"model {spec!r}: {what}; accepted: robustbench:NAME with options "
                        f"'{{\"dataset\": \"cifar10\", \"threat_model\": \"Linf\"}}' (dataset: "
                        f"{', '.join(ROBUSTBENCH_DATASETS)}; threat_model: {', '.join(ROBUSTBENCH_THREATS)}; "
                        f"optional model_dir, default 'models')")
    return load_robustbench(name, kwargs["dataset"], kwargs["threat_model"], kwargs.get("model_dir", "models"))
