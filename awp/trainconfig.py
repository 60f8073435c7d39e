"""`TrainConfig`: every setting of a training run, resolved from dataset defaults < TOML file < flags.

Options have flat names (the CLI's, with underscores: `eps`, `train_steps`, `gamma`, ...); the
threat model and AWP's knobs live in nested `AttackConfig` / `AWPConfig`, as the paper groups them.
The method and AWP are independent: `method` names a registry entry, `method_params` its declared
parameters, `awp` switches Algorithm 2 on; the label "at-awp" reads as method "at" with awp = true.
The resolved config is printed at start (as TOML, so it can be reused with `--config`) and stored in
the run file; resuming under a config that differs names the differing options.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

from awp.attacks import AttackConfig, l2_start_radius, threat_model
from awp.config import check_seed, parse_fraction
from awp.data import dataset_info
from awp.errors import UserError
from awp.kernels import PRECISIONS, KernelOptions
from awp.registry import Registry
from awp.methods import AWP_SUFFIX, get_method, merge_method_flags, method_label, split_label
from awp.perturb import AWPConfig
from awp.presets import options as preset_options
from awp.schedules import check_milestones, get_schedule


# ---------------------------------------------------------------------------------------------
# The clean batch in a training step: what BatchNorm's running statistics see (`bn_clean`)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CleanPass:
    """How a training step measures natural accuracy on its clean batch. `after_step`: at the updated
    weights (else at w, before the step); `updates_bn`: a plain train-mode forward whose BatchNorm
    running statistics take the clean batch in (else they are saved and restored around it)."""

    after_step: bool
    updates_bn: bool
    summary: str


CLEAN_PASSES: Registry[CleanPass] = Registry("--bn-clean", {
    # csdongxian/AWP AT_AWP/train_*.py (and Rice et al.'s train_cifar.py): after `opt.step()` (and the AWP
    # restore) `output = model(normalize(X))` runs in train mode for "Train Acc". Per step BN running stats
    # (momentum 0.1) then see K1 + 2 = 12 adversarial batches (PGD-10, its final loss pass, the training
    # pass) and 1 clean one: 1/13 of the forwards, but as the last it holds 0.1 / (1 - 0.9^13) ~ 13% of
    # the running average that eval mode uses.
    "reference": CleanPass(True, True, "a train-mode forward on the clean batch after each step, as the reference"),
    # This project's first behaviour: BN running statistics only ever see adversarial batches.
    "frozen": CleanPass(False, False, "natural accuracy before the step with BatchNorm statistics frozen"),
})


def clean_pass(name: str) -> CleanPass:
    """The `--bn-clean` behaviour registered as `name`; an unknown name is a one-line `UserError`."""
    return CLEAN_PASSES.lookup(name)


# Values a run file written before an option existed was trained with (not today's defaults), so that
# resuming it, or a demo reusing it, sees the difference instead of silently switching behaviour.
LEGACY_VALUES: dict[str, Any] = {"bn_clean": "frozen", "method_params": {}, "eval_every": 1,  # AT, the only method then, takes none
                                 "precision": "fp32", "channels_last": False, "compile": False}  # Kernels() before --precision
LEGACY_ATTACK_VALUES: dict[str, Any] = {"l2_start": "ball"}


@dataclass(frozen=True)
class TrainConfig(KernelOptions):
    """A training run. Field defaults are the paper's CIFAR-10 settings (Section 5.1); `resolve_config`
    applies `DATASET_DEFAULTS` for the chosen dataset (digits unless told otherwise) on top."""

    dataset: str = "digits"
    data_dir: str = "data"
    arch: str = "preactresnet18"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    method: str = "at"  # METHODS name; AWP is `use_awp`, not part of it
    method_params: dict[str, Any] = field(default_factory=dict)  # the method's declared Params, all filled in
    attack: AttackConfig = AttackConfig()  # training threat model: norm, eps, eta1, K1 (Eq. 9)
    eval_steps: int = 20  # PGD-20 test attack (Section 4.4)
    eval_step_size: float = 2 / 255
    eval_every: int = 1  # train/test robustness every N epochs (and at the last); the validation split every epoch
    use_awp: bool = False  # Algorithm 2 around every step of the method (flat option and flag: awp)
    awp: AWPConfig = AWPConfig()  # gamma, K2, eta2, A (Algorithm 2)
    awp_warmup: int = 0  # epochs of the method without AWP before AWP starts
    bn_clean: str = "reference"  # CLEAN_PASSES: the clean train-mode forward after each step, as the reference
    epochs: int = 200
    batch_size: int = 128
    eval_batch_size: int = 256
    lr: float = 0.1  # eta3 of Eq. 11
    lr_schedule: str = "piecewise"
    lr_milestones: tuple[float, ...] = (0.5, 0.75)  # piecewise: /10 at 50% and 75% of training
    momentum: float = 0.9
    weight_decay: float = 5e-4
    train_size: int = 0  # 0: the whole training set
    train_eval_size: int = 1000  # fixed train subset attacked in eval mode for the gap
    val_split: float = 0.0
    test_size: int = 0  # 0: the whole test set
    save_every: int = 10
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # torch CPU threads; 0: torch's default (tiny models on busy CPUs want 1)
    @property
    def label(self) -> str:
        """What names the run in file names and legends: 'at', or 'at-awp' with AWP on."""
        return method_label(self.method, self.use_awp)

    @property
    def eval_attack(self) -> AttackConfig:
        """The per-epoch evaluation attack: the training threat model with `eval_steps` steps."""
        return replace(self.attack, steps=self.eval_steps, step_size=self.eval_step_size)

    def to_dict(self) -> dict[str, Any]:
        """Nested plain values (what the run file stores as JSON)."""
        d = asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        """The inverse of `to_dict`; a stored config that does not fit is a one-line `UserError`. Options
        a config stored by an earlier version lacks take `LEGACY_VALUES`, what that version did."""
        try:
            d = {**LEGACY_VALUES, **d}
            if "use_awp" not in d and isinstance(d.get("method"), str):
                # Written when AWP was a method of its own: method "at-awp" is AT with AWP on.
                d["use_awp"] = d["method"].endswith(AWP_SUFFIX)
                d["method"] = d["method"].removesuffix(AWP_SUFFIX)
            d["attack"] = AttackConfig(**{**LEGACY_ATTACK_VALUES, **d["attack"]})
            d["awp"] = AWPConfig(**d["awp"])
            d["lr_milestones"] = tuple(d["lr_milestones"])
            return cls(**d)
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"the stored training config is damaged or from another version: {type(e).__name__}: {e}") from None


# ---------------------------------------------------------------------------------------------
# Flat option names <-> fields
# ---------------------------------------------------------------------------------------------

# Options that live in a nested config: flat name -> (section, field).
NESTED: dict[str, tuple[str, str]] = {
    "norm": ("attack", "norm"),
    "eps": ("attack", "eps"),
    "train_steps": ("attack", "steps"),
    "train_step_size": ("attack", "step_size"),
    "l2_start": ("attack", "l2_start"),
    "gamma": ("awp", "gamma"),
    "awp_steps": ("awp", "steps"),
    "awp_step_size": ("awp", "step_size"),
    "awp_alternations": ("awp", "alternations"),
    "awp_include_1d": ("awp", "include_1d"),
}
# Top-level fields under another flat name: `awp` is AWPConfig's section, so the switch is `use_awp`.
RENAMED: dict[str, str] = {"awp": "use_awp"}

# How each flat option is parsed: a registry of small parsers, not an if-chain.
_STR, _INT, _FRAC, _BOOL, _DICT, _FLOATS = "str", "int", "fraction", "bool", "dict", "floats"
KINDS: dict[str, str] = {
    "dataset": _STR, "data_dir": _STR, "arch": _STR, "arch_kwargs": _DICT, "method": _STR, "method_params": _DICT,
    "awp": _BOOL, "norm": _STR, "eps": _FRAC, "train_steps": _INT, "train_step_size": _FRAC, "l2_start": _STR,
    "eval_steps": _INT, "eval_step_size": _FRAC, "eval_every": _INT,
    "gamma": _FRAC, "awp_steps": _INT, "awp_step_size": _FRAC, "awp_alternations": _INT,
    "awp_include_1d": _BOOL, "awp_warmup": _INT, "bn_clean": _STR,
    "epochs": _INT, "batch_size": _INT, "eval_batch_size": _INT,
    "lr": _FRAC, "lr_schedule": _STR, "lr_milestones": _FLOATS, "momentum": _FRAC, "weight_decay": _FRAC,
    "train_size": _INT, "train_eval_size": _INT, "val_split": _FRAC, "test_size": _INT,
    "save_every": _INT, "seed": _INT, "device": _STR, "threads": _INT,
    "precision": _STR, "channels_last": _BOOL, "compile": _BOOL,
}
OPTIONS = tuple(KINDS)

# Options that change where or how fast a run goes, not what it computes: resuming may change them.
# eval_every too: evaluation runs in eval mode on its own random streams, so the weights do not depend on it.
# channels_last and compile change float summation order only, as threads and device do; precision is not one.
RUNTIME_OPTIONS = frozenset({"device", "data_dir", "eval_batch_size", "threads", "eval_every", "channels_last", "compile"})


def flag(name: str) -> str:
    """The command-line spelling of a flat option: 'train_steps' -> '--train-steps' (what messages name)."""
    return "--" + name.replace("_", "-")


def _parse_str(name: str, v: Any) -> str:
    if not isinstance(v, str):
        raise UserError(f"{flag(name)} must be a string, got {v!r}")
    return v


def _parse_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise UserError(f"{flag(name)} must be an integer, got {v!r}")
    try:
        return int(v)
    except ValueError:
        raise UserError(f"{flag(name)} must be an integer, got {v!r}") from None


def _parse_bool(name: str, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    text = str(v).strip().lower() if isinstance(v, (str, int)) else ""
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise UserError(f"{flag(name)} must be true or false, got {v!r}")


# What each JSON-object option looks like, for its error message.
_DICT_EXAMPLES = {"arch_kwargs": '{"widths": [16, 32, 32]}', "method_params": '{"NAME": VALUE}'}


def _parse_dict(name: str, v: Any) -> dict[str, Any]:
    example = _DICT_EXAMPLES[name]
    if isinstance(v, str):
        try:
            v = json.loads(v) if v.strip() else {}
        except json.JSONDecodeError:
            raise UserError(f"{flag(name)} must be a JSON object like '{example}', got {v!r}") from None
    if not isinstance(v, dict):
        raise UserError(f"{flag(name)} must be a table/JSON object like '{example}', got {v!r}")
    return dict(v)


def _parse_floats(name: str, v: Any) -> tuple[float, ...]:
    if not isinstance(v, (str, list, tuple)):
        raise UserError(f"{flag(name)} must be a list of numbers like 0.5,0.75, got {v!r}")
    items = v.replace(",", " ").split() if isinstance(v, str) else list(v)
    return tuple(parse_fraction(s, flag(name)) for s in items)


_PARSERS = {
    _STR: _parse_str,
    _INT: _parse_int,
    _FRAC: lambda name, v: parse_fraction(v, flag(name)),
    _BOOL: _parse_bool,
    _DICT: _parse_dict,
    _FLOATS: _parse_floats,
}


def parse_option(name: str, value: Any) -> Any:
    """Parse one flat option from a flag or a TOML value; None stays None ("use the default")."""
    if name not in KINDS:
        raise UserError(f"unknown option {name!r}; accepted: {', '.join(OPTIONS)}")
    return None if value is None else _PARSERS[KINDS[name]](name, value)


# ---------------------------------------------------------------------------------------------
# Value checks, one per flat option (messages name the flag, e.g. --train-steps, not `steps`)
# ---------------------------------------------------------------------------------------------

Check = Callable[[str, Any], Any]  # (flag, parsed value) -> anything; raises a one-line UserError


def _at_least(lo: int) -> Check:
    """An integer option that must be >= lo."""

    def check(name: str, v: int) -> None:
        if v < lo:
            raise UserError(f"{name} must be >= {lo}, got {v}")

    return check


def _unit_interval(name: str, v: float) -> None:
    """A fraction in [0, 1): momentum, the validation split."""
    if not 0 <= v < 1:
        raise UserError(f"{name} must be in [0, 1), got {v:g}")


def _lookup(fn: Callable[[str], Any]) -> Check:
    """A name looked up in a registry (dataset, method, schedule, norm); its error lists what is accepted."""
    return lambda name, v: fn(v)


def _method_name(name: str, v: str) -> None:
    """A registered method; a label like 'at-awp' in a config built by hand would drop its AWP silently."""
    method, awp = split_label(v)
    if awp:
        raise UserError(f"{name} {v!r} is a label, not a method: give method {method!r} and use_awp=True")


def _milestones(name: str, v: tuple[float, ...]) -> None:
    try:
        check_milestones(v)
    except UserError:
        got = ",".join(f"{m:g}" for m in v)
        raise UserError(f"{name} must be increasing fractions of training in (0, 1], got {got}") from None


def _fraction(name: str, v: float) -> None:
    """eps, step sizes, gamma, lr, weight decay: finite and >= 0 (what `parse_fraction` gives a flag;
    a `TrainConfig` built by hand is checked here)."""
    if not 0 <= v < float("inf"):
        raise UserError(f"{name} must be a finite number >= 0, got {v!r}")


_NONNEG, _POSITIVE = _at_least(0), _at_least(1)
CHECKS: dict[str, Check] = {
    **{name: _fraction for name, kind in KINDS.items() if kind == _FRAC},
    "dataset": _lookup(dataset_info), "method": _method_name, "lr_schedule": _lookup(get_schedule),
    "norm": _lookup(threat_model), "l2_start": _lookup(l2_start_radius), "bn_clean": _lookup(clean_pass),
    "precision": _lookup(PRECISIONS.lookup),
    "lr_milestones": _milestones, "momentum": _unit_interval, "val_split": _unit_interval,
    "epochs": _POSITIVE, "eval_every": _POSITIVE, "batch_size": _POSITIVE, "eval_batch_size": _POSITIVE, "awp_steps": _POSITIVE,
    "awp_alternations": _POSITIVE, "train_steps": _NONNEG, "eval_steps": _NONNEG, "awp_warmup": _NONNEG,
    "train_size": _NONNEG, "train_eval_size": _NONNEG, "test_size": _NONNEG, "save_every": _NONNEG,
    "threads": _NONNEG, "seed": lambda name, v: check_seed(v, name),
}


def check_options(flat: Mapping[str, Any]) -> None:
    """Run the check of every given flat option (None: not given), so the first bad one is named by its flag."""
    for name, check in CHECKS.items():
        if flat.get(name) is not None:
            check(flag(name), flat[name])


def resolve_method_params(method: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """`method`'s declared parameters, `given` checked against them and the others at their defaults;
    an unknown name or a bad value is one line naming --method-params."""
    try:
        return get_method(method).resolve_params(given)
    except UserError as e:
        raise UserError(f"{flag('method_params')}: {e}") from None


def expand_label(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Parsed flat options of one source (file or flags) with a method label 'NAME-awp' read as method
    NAME and awp = true, as --method at-awp meant before AWP became a switch; with awp = false it
    contradicts itself."""
    out = dict(flat)
    if out.get("method") is None:
        return out
    out["method"], awp = split_label(out["method"])
    if awp:
        if out.get("awp") is False:
            raise UserError(f"--method {flat['method']} is --method {out['method']} --awp, which --no-awp contradicts; give one")
        out["awp"] = True
    return out


def to_flat(cfg: TrainConfig) -> dict[str, Any]:
    """Flat option name -> value."""
    out: dict[str, Any] = {}
    for name in OPTIONS:
        if name in NESTED:
            section, attr = NESTED[name]
            out[name] = getattr(getattr(cfg, section), attr)
        else:
            out[name] = getattr(cfg, RENAMED.get(name, name))
    return out


def from_flat(flat: Mapping[str, Any]) -> TrainConfig:
    """Build (and validate) a `TrainConfig` from flat options; missing ones keep the class defaults, and
    the method's parameters not given take the method's defaults."""
    top = {f.name for f in fields(TrainConfig)}
    kw: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {"attack": {}, "awp": {}}
    parsed = expand_label({name: parse_option(name, value) for name, value in flat.items()})
    check_options(parsed)  # before the nested configs, whose own checks know only their field names
    for name, value in parsed.items():
        if name in NESTED:
            section, attr = NESTED[name]
            nested[section][attr] = value
        elif RENAMED.get(name, name) in top:
            kw[RENAMED.get(name, name)] = value
    kw["method_params"] = resolve_method_params(kw.get("method", TrainConfig.method), kw.get("method_params") or {})
    kw["attack"] = AttackConfig(**nested["attack"])
    kw["awp"] = AWPConfig(**nested["awp"])
    cfg = TrainConfig(**kw)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    """Every per-option check of `CHECKS` on a built config (one built by hand skipped `from_flat`), and
    its `method_params` against the method's declared parameters."""
    check_options(to_flat(cfg))
    resolve_method_params(cfg.method, cfg.method_params)
    if get_method(cfg.method).selects == "best_val" and not cfg.val_split > 0:
        raise UserError(f"method {cfg.method!r} chooses its epoch on a validation split; give --val-split above 0, got {cfg.val_split:g}")


# ---------------------------------------------------------------------------------------------
# Defaults per dataset (and per norm for the threat model)
# ---------------------------------------------------------------------------------------------

_CIFAR = {
    "arch": "preactresnet18", "epochs": 200, "batch_size": 128, "eval_batch_size": 256, "lr": 0.1,
    # gamma where GAMMA_DEFAULTS has no (dataset, arch) entry (VGG-19, WideResNets on CIFAR-100/SVHN):
    # the 5e-3 of Section 5.1 / Appendix F.
    "gamma": 5e-3,
    "awp_warmup": 0, "eval_steps": 20, "train_size": 0, "train_eval_size": 1000, "test_size": 0, "save_every": 10,
}
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    # Robust overfitting on 2 CPU cores in about a minute: 300 images are few enough to memorize, so after
    # the first lr decay train robust accuracy keeps rising (~0.55 -> ~0.71) while test robust accuracy
    # peaks (~0.55 near epoch 75-80) and stalls or falls; the gap grows from ~0.09 to ~0.19.
    "digits": {
        "arch": "smallcnn", "epochs": 100, "batch_size": 30, "eval_batch_size": 500, "lr": 0.05,
        "gamma": 0.01, "awp_warmup": 10,  # gamma 0.01 without warm-up diverged at eps 0.25
        "eval_steps": 10, "train_size": 300, "train_eval_size": 300, "test_size": 0, "save_every": 1,
        # One thread: as fast as two for this tiny model, and 2 threads sharing 2 busy cores ran 5-50x slower.
        "threads": 1,
    },
    "cifar10": _CIFAR,
    "cifar100": _CIFAR,
    "svhn": {**_CIFAR, "lr": 0.01},  # Rice et al.'s SVHN learning rate (also csdongxian/AWP train_svhn.py)
}

# gamma (Eq. 8) per (dataset, arch), over DATASET_DEFAULTS' "gamma" (digits: 0.01 for any arch); only
# when --gamma is not given.
GAMMA_DEFAULTS: dict[tuple[str, str], float] = {
    ("cifar10", "preactresnet18"): 1e-2,  # Section 4.4 / Table 1: PreAct ResNet-18, gamma = 1e-2
    ("cifar100", "preactresnet18"): 1e-2,  # Section 4.4 / Table 1
    ("svhn", "preactresnet18"): 1e-2,  # Section 4.4 / Table 1
    ("cifar10", "wrn34_10"): 5e-3,  # Section 5.1: WideResNet-34-10 (AT, TRADES, MART), gamma = 5e-3
    ("cifar10", "wrn28_10"): 5e-3,  # Section 5.1: WideResNet-28-10 (Pre-training, RST)
}

# AWP warm-up epochs per (dataset, norm), over DATASET_DEFAULTS' "awp_warmup"; only when not given.
WARMUP_DEFAULTS: dict[tuple[str, str], int] = {
    # csdongxian/AWP train_svhn.py `--awp-warmup 5`; its logs: svhn_linf "awp(0.01+5warmup)" ran with
    # awp_warmup=5, svhn_l2 with awp_warmup=0 (CIFAR-10/100 0 for both norms).
    ("svhn", "linf"): 5,
    ("svhn", "l2"): 0,
}

# (eps, training step size) per (dataset, norm); a user-set eps without a step size keeps the ratio.
THREAT_DEFAULTS: dict[tuple[str, str], tuple[float, float]] = {
    ("digits", "linf"): (0.25, 0.25 / 4),
    ("digits", "l2"): (1.0, 1.0 / 4),
    ("cifar10", "linf"): (8 / 255, 2 / 255),  # Section 4.4 / 5.1
    ("cifar100", "linf"): (8 / 255, 2 / 255),
    ("svhn", "linf"): (8 / 255, 1 / 255),  # Section 4.4: step 1/255 for SVHN
    ("cifar10", "l2"): (128 / 255, 15 / 255),  # Section 4.4: L2 eps 128/255, step 15/255
    ("cifar100", "l2"): (128 / 255, 15 / 255),
    ("svhn", "l2"): (128 / 255, 15 / 255),
}


def load_toml(path: str | Path) -> dict[str, Any]:
    """Flat options from a TOML file (top-level keys with the CLI's names, '-' or '_')."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"config file {str(path)!r} is a directory; give a TOML file")
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise UserError(f"config file {str(path)!r} not found") from None
    except UnicodeDecodeError:
        raise UserError(f"config file {str(path)!r} is not text (invalid UTF-8), so not a TOML file") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"config file {str(path)!r} is not valid TOML: {e}") from None
    except OSError as e:
        raise UserError(f"config file {str(path)!r} cannot be read: {e.strerror or e}") from None
    out = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in KINDS:
            raise UserError(f"unknown option {key!r} in {str(path)!r}; accepted: {', '.join(OPTIONS)}")
        out[name] = value
    return out


def resolve_config(
    flags: Mapping[str, Any],
    config_file: str | Path | None = None,
    stored: Mapping[str, Any] | None = None,
    preset: str | None = None,
    method_flags: Mapping[str, Mapping[str, Any]] | None = None,
) -> TrainConfig:
    """Defaults (or, when resuming, the `stored` run's config) < `preset` < TOML file < command-line
    `flags`. `flags` maps flat option names to values, None meaning "not given". `preset` names a file
    of `awp.presets` (the paper's settings); its options count as given, exactly as a `--config` file's
    below the user's own file, so the dataset it names picks the dataset defaults under it."""
    def source(raw: Mapping[str, Any]) -> dict[str, Any]:
        return expand_label({k: parse_option(k, v) for k, v in raw.items() if v is not None})

    # Each source's 'at-awp' expands on its own, so a flag's --no-awp overrides the file's "at-awp".
    layers = [source(preset_options(preset) if preset is not None else {}),
              source(load_toml(config_file) if config_file else {}), source(flags)]
    # The method's own defaults (TRADES-AWP's gamma and warm-up, AT-ES's validation split) sit above the
    # preset, whose gamma is AT-AWP's (Table 1), and below the user's file and flags.
    method = {k: v for layer in layers for k, v in layer.items()}.get("method", TrainConfig.method)
    if stored is not None:
        method = layers[2].get("method", TrainConfig.from_dict(stored).method)
    if method_flags:  # --trades-beta etc.: over the method_params of every other source, for this method only
        merged = {k: v for layer in layers for k, v in layer.items()}.get("method_params") or {}
        if stored is not None and "method_params" not in merged:
            merged = TrainConfig.from_dict(stored).method_params
        layers[2] = {**layers[2], "method_params": merge_method_flags(method, method_flags, merged)}
    if stored is not None:  # a resumed run keeps what it was trained with, the method's defaults included
        return from_flat({**to_flat(TrainConfig.from_dict(stored)), **{k: v for layer in layers for k, v in layer.items()}})
    user = {**layers[0], **source(get_method(method).defaults), **layers[1], **layers[2]}
    dataset = user.get("dataset", "digits")
    dataset_info(dataset)
    norm = user.get("norm", "linf")
    threat_model(norm)
    base = dict(DATASET_DEFAULTS.get(dataset, {}))
    arch = user.get("arch", base.get("arch", TrainConfig.arch))
    if (dataset, arch) in GAMMA_DEFAULTS:
        base["gamma"] = GAMMA_DEFAULTS[(dataset, arch)]
    if (dataset, norm) in WARMUP_DEFAULTS:
        base["awp_warmup"] = WARMUP_DEFAULTS[(dataset, norm)]
    eps_default, step_default = THREAT_DEFAULTS.get((dataset, norm), (None, None))
    eps = user.get("eps", eps_default)
    if eps is None or ("train_step_size" not in user and step_default is None):
        raise UserError(f"no default eps for {dataset} with norm {norm}; give --eps and --train-step-size")
    if "train_step_size" not in user:
        # Keep the paper's step/eps ratio when only eps is given (eps/4 for CIFAR L-inf).
        user["train_step_size"] = eps * (step_default / eps_default)
    flat = {**to_flat(TrainConfig()), **base, "dataset": dataset, "eps": eps, **user}
    if "eval_step_size" not in user:
        flat["eval_step_size"] = flat["train_step_size"]
    cfg = from_flat(flat)
    # Store eta2 as a number (Appendix D.2's gamma / (A * K2) unless given), so the run file says it.
    return replace(cfg, awp=replace(cfg.awp, step_size=cfg.awp.eta2))


def config_diff(stored: TrainConfig, new: TrainConfig) -> list[str]:
    """Flat options whose values differ, ignoring runtime-only ones (device, data_dir, ...)."""
    a, b = to_flat(stored), to_flat(new)
    return [k for k in OPTIONS if k not in RUNTIME_OPTIONS and a[k] != b[k]]


def format_toml(cfg: TrainConfig) -> str:
    """The resolved config as flat TOML lines (paste into a file for `--config`)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        raise TypeError(f"cannot write {v!r} as TOML")

    return "\n".join(f"{k} = {value(v)}" for k, v in to_flat(cfg).items() if v is not None)
