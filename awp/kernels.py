"""Precision and kernel options of one command: `--precision`, `--channels-last`, `--compile`.

`Kernels` is a small frozen value that training, `landscape eval` and the landscape engine share. Only the
precision changes numbers (beyond float summation order), so only it decides whether a file resumes:
`decides()` gives it for configs, `record()` gives all three for what a result says it ran with.

- precision: `torch.autocast` around forward passes and their losses, with the dtype of `PRECISIONS`.
  fp32 (the default) enters no autocast at all, so every number stays what it was. fp16 training scales
  the training loss's backward with a `torch.amp.GradScaler` (fp16's range underflows small gradients);
  PGD's input gradient and AWP's weight gradient are used through their sign or direction (Eq. 14,
  Eq. 10) and are not scaled. fp16 autocast on a CPU is accepted where torch supports it (torch >= 2.4
  does; it is several times slower than fp32 there: for GPUs), and refused in one line where it does not.
- channels_last: the model's 4-D weights (and inputs, where our loops hold them) in
  `torch.channels_last`; convolutions then produce channels_last activations. On CPU, max-pooling with
  gradients is much faster that way (smallcnn, train-mode PGD-10 on 300 digits: 1.8x measured here).
  Attacks are handed float32 logits (`float_logits`): AutoAttack mixes them with float32 buffers.
- compile: `model.compile()` in place, which keeps `named_parameters()` and `state_dict()` names (the
  keys of directions and checkpoints). A platform where compiling fails (no working C++ compiler,
  unsupported Python) runs uncompiled after one `KernelWarning` at the first forward that failed.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ContextManager

import torch
from torch import Tensor, nn

from awp.errors import UserError
from awp.registry import Registry


class KernelWarning(UserWarning):
    """A kernel option could not be honoured and the run goes on without it (`--compile` fallback);
    the CLI prints it as one `warning: ...` line."""


@dataclass(frozen=True)
class Precision:
    """One `--precision`: the autocast dtype (None: no autocast) and whether training scales its loss."""

    dtype: torch.dtype | None
    scales_loss: bool
    summary: str


PRECISIONS: Registry[Precision] = Registry("--precision", {
    "fp32": Precision(None, False, "float32 throughout, no autocast (the default: every number as before)"),
    # bfloat16 has float32's exponent range: no gradient underflows, so no loss scaling (8 mantissa bits).
    "bf16": Precision(torch.bfloat16, False, "torch.autocast to bfloat16"),
    # float16's largest value is 65504 and its smallest normal 6e-5: the training loss is scaled up
    # before backward and its gradients unscaled before the step, steps with inf/NaN skipped (GradScaler).
    "fp16": Precision(torch.float16, True, "torch.autocast to float16, training's backward through a GradScaler"),
})


def _device_type(device: torch.device | str) -> str:
    return torch.device(device).type


def _autocast(precision: str, device_type: str) -> torch.autocast:
    """A `torch.autocast` for `precision` on `device_type`, or a one-line UserError where torch cannot
    (it would otherwise warn and silently run in float32, or raise a RuntimeError at the first use).

    The weight-cast cache is off: weights move in place inside one region (AWP's w + v, the landscape's
    w + alpha d, the optimizer's step) and the cache would keep the cast of the weights before the move."""
    dtype = PRECISIONS.lookup(precision).dtype
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ctx = torch.autocast(device_type, dtype=dtype, cache_enabled=False)
        except RuntimeError as e:
            raise UserError(f"--precision {precision} is not supported on {device_type} "
                            f"(torch {torch.__version__}: {str(e).splitlines()[0]}); use fp32") from None
    disabled = [w for w in caught if "isabling autocast" in str(w.message)]
    if disabled:
        raise UserError(f"--precision {precision} is not supported on {device_type} by torch {torch.__version__} "
                        f"({str(disabled[0].message).splitlines()[0]}); use fp32")
    return ctx


def _reason(e: BaseException) -> str:
    """What went wrong in one line: a backend failure's own cause ("InvalidCxxCompiler: No working C++
    compiler found ..."), not dynamo's wrapper text around it."""
    inner = getattr(e, "inner_exception", None) or e
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    name = type(inner).__name__
    if not lines:
        return name
    return lines[0] if lines[0].split(" ")[0].endswith(":") else f"{name}: {lines[0]}"  # "Name: ..." as it is


def _compile_in_place(model: nn.Module) -> None:
    """`model.compile()` (names unchanged), falling back to the uncompiled module, with one
    `KernelWarning`, when torch cannot compile here: at `compile()` itself, or at a forward whose
    compilation fails (torch compiles lazily, per mode and input shape). An error the uncompiled module
    raises too (a bug, a shape mistake) is raised as it is, without a warning."""
    from torch._dynamo.exc import TorchDynamoException

    def fall_back(e: BaseException) -> None:
        model._compiled_call_impl = None  # nn.Module.__call__ goes back to the plain _call_impl
        warnings.warn(f"--compile: torch.compile failed here ({_reason(e)}); running uncompiled", KernelWarning,
                      stacklevel=3)

    try:
        model.compile()
    except (RuntimeError, TorchDynamoException) as e:  # e.g. a Python version dynamo does not support
        fall_back(e)
        return
    compiled: Callable[..., Any] = model._compiled_call_impl

    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return compiled(*args, **kwargs)
        except TorchDynamoException as e:
            out = model._call_impl(*args, **kwargs)  # a real error of the model raises here, unwarned
            fall_back(e)
            return out

    model._compiled_call_impl = call


class FloatLogits(nn.Module):
    """`model` with its outputs cast back to float32: under autocast logits come out in bf16/fp16, and code
    outside this project (AutoAttack's Square attack) writes them into float32 tensors of its own."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.model(*args, **kwargs)
        return out.float() if isinstance(out, Tensor) and out.is_floating_point() else out


@dataclass(frozen=True)
class Kernels:
    """How forwards run: `precision` (a `PRECISIONS` name), `channels_last`, `compile`. The default is
    today's plain float32, contiguous, uncompiled model; only `precision` changes the numbers."""

    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        PRECISIONS.lookup(self.precision)  # one line listing fp32, bf16, fp16
        for name in ("channels_last", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"--{name.replace('_', '-')} must be true or false, got {getattr(self, name)!r}")

    @property
    def spec(self) -> Precision:
        return PRECISIONS[self.precision]

    def prepare(self, model: nn.Module) -> nn.Module:
        """`model` in place (and returned): 4-D weights in channels_last, forward compiled. Call it after
        moving the model to its device; parameter names and objects stay the same, so optimizers,
        directions and state dicts keyed by name are unaffected."""
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.compile and getattr(model, "_compiled_call_impl", None) is None:
            _compile_in_place(model)
        return model

    def inputs(self, x: Tensor) -> Tensor:
        """A batch [B, C, H, W] in the memory format of the prepared model (other shapes as they are)."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def autocast(self, device: torch.device | str) -> ContextManager:
        """The region forwards and their losses run in: `torch.autocast` to the precision's dtype on
        `device`'s type (weight-cast cache off, see `_autocast`), a no-op for fp32. Backward passes may
        run inside it (PGD's input gradient does): autograd runs them in the forward's dtypes."""
        if self.spec.dtype is None:
            return contextlib.nullcontext()
        return _autocast(self.precision, _device_type(device))

    def float_logits(self, model: nn.Module) -> nn.Module:
        """`model` itself at fp32, else a `FloatLogits` view of it (the same weights) for attacks."""
        return model if self.spec.dtype is None else FloatLogits(model)

    def check(self, device: torch.device | str) -> None:
        """Refuse, in one line and before any compute, a precision torch cannot run on `device`."""
        self.autocast(device)

    def scaler(self, device: torch.device | str) -> torch.amp.GradScaler:
        """Training's loss scaler: a `torch.amp.GradScaler` enabled for fp16 only (disabled, it passes
        the loss and the optimizer step through unchanged)."""
        return torch.amp.GradScaler(_device_type(device), enabled=self.spec.scales_loss)

    def record(self) -> dict[str, Any]:
        """All three options as plain values (results, run-file configs, eval JSON)."""
        return {"precision": self.precision, "channels_last": self.channels_last, "compile": self.compile}

    def decides(self) -> dict[str, Any]:
        """The options that decide the numbers, for a config that resuming compares: the precision,
        absent at fp32, so files written before these options existed resume under the default."""
        return {} if self.precision == "fp32" else {"precision": self.precision}


@dataclass(frozen=True, kw_only=True)
class KernelOptions:
    """The three kernel options as fields of a command's config (train-awp, probe/plot2d, eval), declared
    once; keyword-only, so they follow each config's own fields in its constructor."""

    precision: str = "fp32"  # PRECISIONS: autocast dtype of every forward (changes numbers)
    channels_last: bool = False  # weights and batches in channels_last (speed only)
    compile: bool = False  # torch.compile of the model's forward (speed only)

    @property
    def kernels(self) -> Kernels:
        """How the forwards run (`Kernels`, validated on construction): precision, memory format, compilation."""
        return Kernels(self.precision, self.channels_last, self.compile)
