"""`landscape`: one typer app for training (AT / AT-AWP) and weight-loss-landscape diagnostics.

The CLI only parses options, builds a config and calls one library function. User mistakes raise
`awp.errors.UserError` (or a click usage error) and become one line `error: ...` with exit status 2,
in one place: `main()`.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from awp import __version__
from awp.errors import UserError

app = typer.Typer(
    name="landscape",
    help="Adversarial Weight Perturbation trainer and on-the-fly PGD weight-loss-landscape diagnostics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class Norm(str, Enum):
    linf = "linf"
    l2 = "l2"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"landscape {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Adversarial Weight Perturbation trainer and on-the-fly PGD weight-loss-landscape diagnostics."""


DatasetOpt = Annotated[str, typer.Option("--dataset", help="digits (embedded, default), cifar10, cifar100, svhn.")]
DataDirOpt = Annotated[Path, typer.Option("--data-dir", help="Where torchvision datasets live.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]


# --------------------------------------------------------------------------------------------- data


@app.command()
def download(
    dataset: Annotated[str, typer.Argument(help="cifar10, cifar100 or svhn (digits is embedded).")],
    data_dir: DataDirOpt = Path("data"),
) -> None:
    """Fetch a torchvision dataset into --data-dir (needs internet)."""
    from awp.data import dataset_info, download as fetch

    info = dataset_info(dataset)
    if not info.needs_download:
        typer.echo(f"{dataset} is embedded in the package; nothing to download")
        return
    fetch(dataset, data_dir)
    typer.echo(f"{dataset} ready in {data_dir}")


# --------------------------------------------------------------------------------------------- demo


@app.command()
def demo(
    dataset: DatasetOpt = "digits",
    arch: Annotated[str, typer.Option("--arch", help="Model name from the registry.")] = "smallcnn",
    norm: Annotated[Norm, typer.Option("--norm", help="Threat model.")] = Norm.linf,
    eps: Annotated[str, typer.Option("--eps", help="Perturbation radius in pixels, e.g. 0.25 or 8/255.")] = "0.25",
    steps: Annotated[int, typer.Option("--steps", help="PGD steps for training and evaluation.")] = 10,
    epochs: Annotated[int, typer.Option("--epochs", help="Training epochs.")] = 15,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    data_dir: DataDirOpt = Path("data"),
    device: DeviceOpt = "auto",
) -> None:
    """The main job on the embedded digits: adversarially train briefly and report clean and PGD accuracy."""
    from awp.config import parse_fraction, resolve_device
    from landscape.demo import DemoConfig, run_demo

    cfg = DemoConfig(
        dataset=dataset, arch=arch, norm=norm.value, eps=parse_fraction(eps, "eps"), steps=steps,
        epochs=epochs, seed=seed, data_dir=str(data_dir),
    )
    run_demo(cfg, resolve_device(device))


# --------------------------------------------------------------------------------------------- entry


def main(argv: Optional[list[str]] = None) -> None:
    """Run the app; user mistakes become one `error: ...` line on stderr and exit status 2."""
    command = typer.main.get_command(app)
    try:
        rc = command.main(args=argv, prog_name="landscape", standalone_mode=False)
    except UserError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        rc = 130
    except Exception as e:
        # Usage errors (bad option value, unknown command): click's and typer's vendored click alike
        # carry `format_message()` and `exit_code`; anything else is a bug and keeps its traceback.
        if not (hasattr(e, "format_message") and isinstance(getattr(e, "exit_code", None), int)):
            raise
        typer.echo("error: " + " ".join(e.format_message().split()), err=True)
        sys.exit(2)
    if rc == 130:
        typer.echo("interrupted; completed work is kept", err=True)
    sys.exit(rc if isinstance(rc, int) else 0)

if __name__ == "__main__":
    main()
