"""Bad input for every subcommand, through the real CLI (issue 10).

Every row of `ROWS` is one user mistake. Each runs the CLI (`python -m cli ...`) in a process of its
own, in its own fresh working directory holding copies of the fixture files (tiny run files, an
export, probe and plot2d results, hand-made bad files), and must end with:

- exit status 2;
- exactly one stderr line starting with `error: `, no traceback, and at most 3 non-empty lines of
  stdout + stderr together (1 for the pickle rows; a `warning:` line only where the row allows it);
- the row's required substrings (the bad value or the flag name) in that error line, so that a wrong
  error cannot pass;
- no path created, removed or changed anywhere under its working directory (sha256 of every file);
- for output-location rows, a refusal before any compute (the row took < 15 s).

The fixture files are made once per module through the CLI; the rows run concurrently (4 at a time)
and each parametrized test asserts on one stored result, so the report names every failing row.
Rows are forked from servers that imported torch once (see `SERVER`): a fresh interpreter spends ~2 s
of CPU per row importing torch and tearing it down, which for 150 rows on 2 cores is minutes;
BAD_INPUT_FRESH=1 runs every row as a plain `sys.executable -m cli` subprocess instead.
Commands that would compute if the mistake were missed get tiny sizes (`cmd()`), so a row that wrongly
succeeds fails in seconds and its outputs show up as created files. Every row runs under an
address-space limit, so a missed "too large" value fails with MemoryError instead of swapping the machine.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import json
import os
import pickle
import queue
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import ROOT

MARKER_NAME = "EVIL_PICKLE_WAS_UNPICKLED"  # created by evil.pt's payload if anything ever unpickles it
SHAPE_KEY = "net.3.weight"  # smallcnn's second conv, [32, 16, 3, 3]; shape.h5 holds [32, 16, 5, 5]
DEMO_RUN = "runs/demo/digits-at-seed0-quick.h5"  # landscape/demo.py: {runs_dir}/digits-{method}-seed{seed}-quick.h5
NCPU = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)  # usable cores
MEM_LIMIT_KB = 4_000_000  # ulimit -v for every row: tiny runs need < 3 GB of address space
FAST_S = 15.0  # output-location mistakes must be refused before any compute
WORKERS = 4

SAME, EXISTS, WHERE, VALUE, FILES, CONTRA = "same-output", "existing-output", "output-location", "bad-value", "bad-file", "contradiction"


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One mistake. `need`: each item a substring, or a tuple of alternatives, that the error line must
    contain (case-insensitive). `setup`: a name in SETUPS run in the row's directory before it starts;
    `skip`: a name in SKIPS deciding, after setup, whether the row can be checked here."""

    id: str
    family: str
    argv: tuple[str, ...]
    need: tuple = ()
    setup: str | None = None
    skip: str | None = None
    timeout: float = 120
    fast: bool = False
    warning: bool = False  # one leading `warning:` line is allowed
    sole_line: bool = False  # the error line must be all the output


# Tiny sizes for whatever the mistake did not name, so a missed mistake costs seconds, not minutes.
TINY: dict[str, tuple[tuple[str, str], ...]] = {
    "train-awp": (("--epochs", "1"), ("--train-size", "20"), ("--train-eval-size", "20"), ("--test-size", "20"),
                  ("--train-steps", "1"), ("--eval-steps", "1"), ("--out", "new.h5")),
    "probe": (("--dirs", "1"), ("--alphas", "-1:1:3"), ("--samples", "10"), ("--pgd", "1")),
    "plot2d": (("--grid", "3x3"), ("--samples", "10"), ("--pgd", "1")),
    "gap": (("--dirs", "1"), ("--alphas", "-1:1:3"), ("--samples", "10"), ("--pgd", "1")),
    "report": (("--dirs", "1"), ("--alphas", "-1:1:3"), ("--samples", "10"), ("--pgd", "1")),
    "eval": (("--attacks", "fgsm"), ("--samples", "10"), ("--out", "ev.json")),
    "sharpness": (("--measures", "rise"), ("--dirs", "1"), ("--samples", "10"), ("--pgd", "1")),
}
ALIASES = {"-o": "--out", "-q": "--quiet"}


def cmd(command: str, *args: str) -> tuple[str, ...]:
    """`command args...` plus the tiny sizes of TINY[command] for the options `args` does not give."""
    given = {ALIASES.get(a.split("=", 1)[0], a.split("=", 1)[0]) for a in args if a.startswith("-")}
    extra = [x for flag, value in TINY.get(command, ()) if flag not in given for x in (flag, value)]
    return (command, *args, *extra)


def raw(command: str, *args: str) -> tuple[str, ...]:
    """`command args...` exactly (for --from, --resume and rows where extra options would confuse)."""
    return (command, *args)


MEMORY = ("memory", "GB", "GiB", "TB", "TiB", "bytes")
NETWORK = ("network", "internet", "unreachable", "offline", "connect", "download")

ROWS: list[Row] = [
    # -- 1. an output that is an input: refused even with --overwrite; the input stays as it was
    Row("export-o-is-input", SAME, raw("export", "run.h5", "-o", "run.h5"), ("run.h5",)),
    Row("export-o-dotdot-is-input", SAME, raw("export", "run.h5", "-o", "./sub/../run.h5"), ("run.h5",)),
    Row("export-o-symlink-to-input", SAME, raw("export", "run.h5", "-o", "link.h5"), (("link.h5", "run.h5"),)),
    Row("probe-png-is-input", SAME, cmd("probe", "run.h5", "--png", "run.h5"), ("run.h5",)),
    Row("probe-o-is-input-overwrite", SAME, cmd("probe", "run.h5", "-o", "run.h5", "--overwrite"), ("run.h5",)),
    Row("plot2d-o-is-input-overwrite", SAME, cmd("plot2d", "run.h5", "-o", "run.h5", "--overwrite"), ("run.h5",)),
    Row("report-o-is-input", SAME, cmd("report", "run.h5", "-o", "run.h5"), ("run.h5",)),
    Row("report-o-is-input-overwrite", SAME, cmd("report", "run.h5", "-o", "run.h5", "--overwrite"), ("run.h5",)),
    Row("demo-report-is-its-run", SAME, raw("demo", "--quick", "--report", DEMO_RUN), ("digits-at-seed0-quick.h5",),
        setup="demo_run", timeout=90),
    # --overwrite never lets a run file be replaced by something of another kind
    Row("probe-pt-o-run-overwrite", SAME, cmd("probe", "model.pt", "-o", "run.h5", "--overwrite"), ("run.h5",)),
    Row("plot2d-pt-o-run-overwrite", SAME, cmd("plot2d", "model.pt", "-o", "run2.h5", "--overwrite"), ("run2.h5",)),
    Row("export-o-other-run-overwrite", SAME, raw("export", "run.h5", "-o", "run2.h5", "--overwrite"), ("run2.h5",)),

    # -- 2. an existing output without --overwrite
    Row("export-o-existing-pt", EXISTS, raw("export", "run.h5", "-o", "model.pt"), ("model.pt",)),
    Row("probe-png-existing-user-png", EXISTS, cmd("probe", "run.h5", "--png", "existing.png"), ("existing.png",)),
    Row("probe-o-existing-2d-results", EXISTS, cmd("probe", "run.h5", "-o", "p2d.h5"), ("p2d.h5",)),
    Row("plot2d-o-existing-foreign-h5", EXISTS, cmd("plot2d", "run.h5", "-o", "other.h5"), ("other.h5",)),
    Row("report-o-existing-html", EXISTS, cmd("report", "run.h5", "-o", "existing.html"), ("existing.html",)),
    Row("train-o-existing-run", EXISTS, cmd("train-awp", "-o", "run.h5"), ("run.h5",)),
    Row("gap-out-dir-existing-user-png", EXISTS, cmd("gap", "run.h5", "--out-dir", "figs"), ("gap-curves.png",)),

    # -- 3. where the output goes: refused before any compute
    Row("export-o-is-dir", WHERE, raw("export", "run.h5", "-o", "somedir"), ("somedir",), fast=True),
    Row("probe-o-is-dir", WHERE, cmd("probe", "run.h5", "-o", "outdir.h5"), ("outdir.h5",), fast=True),
    Row("plot2d-o-is-dir", WHERE, cmd("plot2d", "run.h5", "-o", "outdir.h5"), ("outdir.h5",), fast=True),
    Row("train-o-is-dir", WHERE, cmd("train-awp", "-o", "outdir.h5"), ("outdir.h5",), fast=True),
    Row("export-parent-is-file", WHERE, raw("export", "run.h5", "-o", "run.h5/x.pt"), ("run.h5",), fast=True),
    Row("probe-png-parent-is-file", WHERE, cmd("probe", "run.h5", "--png", "model.pt/x.png"), ("model.pt",), fast=True),
    Row("probe-o-parent-is-file", WHERE, cmd("probe", "run.h5", "-o", "model.pt/x.h5"), ("model.pt",), fast=True),
    Row("train-parent-is-file", WHERE, cmd("train-awp", "-o", "model.pt/run.h5"), ("model.pt",), fast=True),
    Row("report-parent-is-file", WHERE, cmd("report", "run.h5", "-o", "notadir/x.html"), ("notadir",), fast=True),
    Row("gap-out-dir-is-file", WHERE, cmd("gap", "run.h5", "--out-dir", "model.pt"), ("model.pt",), fast=True),
    Row("demo-report-parent-is-file", WHERE, raw("demo", "--quick", "--report", "notadir/r.html"), ("notadir",),
        fast=True, timeout=30),
    Row("export-o-uncreatable-parent", WHERE, raw("export", "run.h5", "-o", "/proc/awp-landscape-test/x.pt"),
        ("/proc/awp-landscape-test",), fast=True),
    Row("export-o-readonly-dir", WHERE, raw("export", "run.h5", "-o", "ro/x.pt"), ("ro/x.pt",), setup="readonly",
        skip="writable_ro", fast=True),
    Row("train-o-readonly-dir", WHERE, cmd("train-awp", "-o", "ro/run.h5"), ("ro/run.h5",), setup="readonly",
        skip="writable_ro", fast=True),

    # -- 4. bad option values
    Row("train-steps-negative", VALUE, cmd("train-awp", "--train-steps", "-1"), ("--train-steps",)),
    Row("train-eps-negative", VALUE, cmd("train-awp", "--eps", "-1"), ("eps",)),
    Row("train-eps-not-a-number", VALUE, cmd("train-awp", "--eps", "abc"), ("abc",)),
    Row("train-eps-8-linf", VALUE, cmd("train-awp", "--eps", "8"), (("8/255", "--eps"),)),
    Row("train-gamma-negative", VALUE, cmd("train-awp", "--method", "at-awp", "--gamma", "-0.1"), ("gamma",)),
    Row("train-epochs-0", VALUE, cmd("train-awp", "--epochs", "0"), ("epochs",)),
    Row("train-batch-size-0", VALUE, cmd("train-awp", "--batch-size", "0"), ("batch",)),
    Row("train-momentum-1.5", VALUE, cmd("train-awp", "--momentum", "1.5"), ("momentum",)),
    Row("train-val-split-1.2", VALUE, cmd("train-awp", "--val-split", "1.2"), ("val",)),
    Row("train-lr-milestones-2", VALUE, cmd("train-awp", "--lr-milestones", "0.5,2"), ("milestone",)),
    Row("train-method-unknown", VALUE, cmd("train-awp", "--method", "nope"), ("nope",)),
    Row("train-dataset-unknown", VALUE, cmd("train-awp", "--dataset", "nope"), ("nope",)),
    Row("train-arch-unknown", VALUE, cmd("train-awp", "--arch", "nope"), ("nope",)),
    Row("train-arch-kwargs-bad-json", VALUE, cmd("train-awp", "--arch-kwargs", "{bad json"), ("arch",)),
    Row("train-arch-kwargs-list", VALUE, cmd("train-awp", "--arch-kwargs", "[1,2]"), ("arch",)),
    Row("train-arch-kwargs-bad-widths", VALUE, cmd("train-awp", "--arch-kwargs", '{"widths": "abc"}'), ("widths",)),
    Row("train-arch-kwargs-huge", VALUE, cmd("train-awp", "--arch-kwargs", '{"widths": [100000, 100000, 100000]}'),
        (MEMORY,)),
    Row("train-seed-negative", VALUE, cmd("train-awp", "--seed", "-1"), ("seed",)),
    Row("train-bn-clean-unknown", VALUE, cmd("train-awp", "--bn-clean", "sometimes"), ("sometimes", "reference", "frozen")),
    Row("train-precision-unknown", VALUE, cmd("train-awp", "--precision", "fp8"), ("fp8", "fp32", "bf16", "fp16")),
    # precision changes the numbers: run.h5 (fp32) does not resume under bf16
    Row("train-resume-other-precision", VALUE, raw("train-awp", "-o", "run.h5", "--resume", "--precision", "bf16"),
        ("precision", "bf16", "fp32")),
    Row("train-l2-start-unknown", VALUE, cmd("train-awp", "--norm", "l2", "--l2-start", "sphere"), ("sphere", "reference", "ball")),
    Row("train-seed-huge", VALUE, cmd("train-awp", "--seed", "99999999999999999999"), ("seed",)),
    Row("train-config-eps-true", VALUE, cmd("train-awp", "--config", "eps_true.toml"), ("eps",)),
    Row("train-config-unknown-key", VALUE, cmd("train-awp", "--config", "unknown.toml"), ("bogus-key",)),
    Row("train-config-binary", VALUE, cmd("train-awp", "--config", "binary.toml"), ("binary.toml",)),
    Row("train-config-is-dir", VALUE, cmd("train-awp", "--config", "confdir"), ("confdir",)),
    Row("train-config-missing", VALUE, cmd("train-awp", "--config", "missing.toml"), ("missing.toml",)),
    Row("train-preset-unknown", VALUE, cmd("train-awp", "--preset", "nope"), ("nope", "preset", "preactresnet18-cifar10-linf")),
    Row("presets-unknown", VALUE, raw("presets", "nope"), ("nope", "preset", "wrn34-10-cifar10-linf"), sole_line=True),
    Row("train-resume-and-overwrite", VALUE, cmd("train-awp", "-o", "run.h5", "--resume", "--overwrite"),
        ("--resume", "--overwrite")),
    Row("train-device-cuda-no-gpu", VALUE, cmd("train-awp", "--device", "cuda"), ("cuda",), skip="has_cuda"),
    Row("train-device-tpu", VALUE, cmd("train-awp", "--device", "tpu"), ("tpu",)),
    Row("train-workers-0", VALUE, cmd("train-awp", "--workers", "0"), ("--workers",)),
    # Refused before any worker starts (NCPU + 1: against code that misses it, no flood of processes).
    Row("train-workers-above-cores", VALUE, cmd("train-awp", "--workers", str(NCPU + 1)), ("--workers", "CPU core"), fast=True),
    # 21 examples in batches of 20: the last batch has 1 example for 2 workers (checked before they start).
    Row("train-workers-batch-split", VALUE, cmd("train-awp", "--workers", "2", "--oversubscribe", "--train-size", "21",
                                                "--batch-size", "20"), ("2 workers", "--batch-size"), fast=True),
    Row("probe-alphas-no-zero", VALUE, cmd("probe", "run.h5", "--alphas", "-1:1:4"), ("alpha",)),
    Row("probe-alphas-reversed", VALUE, cmd("probe", "run.h5", "--alphas", "1:-1:5"), ("alpha",)),
    Row("probe-alphas-one-point", VALUE, cmd("probe", "run.h5", "--alphas", "-1:1:1"), ("alpha",)),
    Row("probe-alphas-huge", VALUE, cmd("probe", "run.h5", "--alphas", "-1:1:1000000000"), ("alpha",)),
    Row("probe-dirs-0", VALUE, cmd("probe", "run.h5", "--dirs", "0"), ("dirs",)),
    Row("probe-points-per-batch-0", VALUE, cmd("probe", "run.h5", "--points-per-batch", "0"), ("--points-per-batch", "'0'", "auto")),
    Row("plot2d-points-per-batch-word", VALUE, cmd("plot2d", "run.h5", "--points-per-batch", "many"), ("--points-per-batch", "many")),
    Row("probe-dirs-huge", VALUE, cmd("probe", "run.h5", "--dirs", "1000000000"), ("dirs",)),
    Row("probe-radius-outside", VALUE, cmd("probe", "run.h5", "--radius", "5"), ("--radius",)),
    Row("probe-epoch-unknown", VALUE, cmd("probe", "run.h5", "--epoch", "nope"), ("nope",)),
    Row("probe-epoch-not-saved", VALUE, cmd("probe", "run.h5", "--epoch", "999"), ("999",)),
    Row("probe-normalize-unknown", VALUE, cmd("probe", "run.h5", "--normalize", "nope"), ("nope",)),
    Row("probe-model-not-importable", VALUE, cmd("probe", "model.pt", "--model", "nopkg.nets:Net"), ("nopkg",)),
    Row("probe-model-kwargs-bad-json", VALUE, cmd("probe", "model.pt", "--model-kwargs", "{bad"), ("--model-kwargs",)),
    Row("probe-model-kwargs-list", VALUE, cmd("probe", "model.pt", "--model-kwargs", "[1]"), ("--model-kwargs",)),
    Row("probe-direction-unknown", VALUE, cmd("probe", "run.h5", "--direction", "nope"), ("nope",)),
    Row("plot2d-direction-unknown", VALUE, cmd("plot2d", "run.h5", "--direction", "nope"), ("nope",)),
    Row("plot2d-direction-no-plane", VALUE, cmd("plot2d", "run.h5", "--direction", "interpolate"), ("interpolate", "probe")),
    Row("probe-params-match-nothing", VALUE, cmd("probe", "run.h5", "--params", "layer9.*"), ("layer9.*", "net.0.weight")),
    Row("probe-pca-two-checkpoints", VALUE, cmd("probe", "run.h5", "--direction", "pca"), ("pca", "has 2", "--save-every")),
    Row("plot2d-pca-two-checkpoints", VALUE, cmd("plot2d", "run.h5", "--direction", "pca"), ("has 2", "--save-every")),
    Row("probe-gamma-without-awp", VALUE, cmd("probe", "run.h5", "--gamma", "0.01"), ("--gamma", "awp")),
    Row("probe-to-missing-file", VALUE, cmd("probe", "run.h5", "--direction", "interpolate", "--to", "missing.h5"), ("missing.h5",)),
    Row("probe-interpolate-without-to", VALUE, cmd("probe", "run.h5", "--direction", "interpolate"), ("--to",)),
    Row("probe-to-without-interpolate", VALUE, cmd("probe", "run.h5", "--to", "last"), ("--to",)),
    Row("probe-to-many-epochs", VALUE, cmd("probe", "run.h5", "--direction", "interpolate", "--to", "all"), ("--to",)),
    Row("probe-to-not-saved", VALUE, cmd("probe", "run.h5", "--direction", "interpolate", "--to", "999"), ("999",)),
    Row("probe-chunk-0", VALUE, cmd("probe", "run.h5", "--chunk", "0"), ("--chunk",)),
    Row("probe-workers-0", VALUE, cmd("probe", "run.h5", "--workers", "0"), ("--workers",)),
    Row("train-dataset-npz-missing", VALUE, cmd("train-awp", "--dataset", "npz:missing.npz"), ("missing.npz",)),
    Row("train-dataset-folder-missing", VALUE, cmd("train-awp", "--dataset", "folder:nodir"), ("nodir",)),
    Row("train-model-not-importable", VALUE, cmd("train-awp", "--arch", "nopkg.nets:Net"), ("nopkg",)),
    Row("train-method-params-bad-json", VALUE, cmd("train-awp", "--method-params", "{bad"), ("method",)),
    Row("train-method-params-unknown", VALUE, cmd("train-awp", "--method-params", '{"beta": 6}'), ("beta",)),
    Row("train-option-of-other-method", VALUE, cmd("train-awp", "--method", "mart", "--trades-beta", "3"),
        ("--trades-beta", "trades", "mart", "--mart-lambda")),
    Row("train-method-option-bad-value", VALUE, cmd("train-awp", "--method", "mart", "--mart-lambda", "-1"), ("lambda", ">= 0", "-1")),
    Row("train-rst-unlabeled-wrong-shape", VALUE, cmd("train-awp", "--method", "rst", "--rst-unlabeled", "npz:rgb.npz",
        "--rst-labeler-epochs", "1"), ("[3, 8, 8]", "[1, 8, 8]"), setup="rgb_npz"),
    Row("train-rst-unlabeled-unknown", VALUE, cmd("train-awp", "--method", "rst", "--rst-unlabeled", "tinyimages"),
        ("tinyimages", "npz:PATH")),
    Row("train-at-es-without-val", VALUE, cmd("train-awp", "--method", "at-es", "--val-split", "0"), ("at-es", "--val-split")),
    Row("probe-bn-unknown", VALUE, cmd("probe", "run.h5", "--bn", "nope"), ("nope",)),
    Row("probe-precision-unknown", VALUE, cmd("probe", "run.h5", "--precision", "fp8"), ("fp8", "fp32", "bf16", "fp16")),
    Row("plot2d-precision-unknown", VALUE, cmd("plot2d", "run.h5", "--precision", "fp8"), ("fp8", "fp32", "bf16", "fp16")),
    Row("probe-pgd-negative", VALUE, cmd("probe", "run.h5", "--pgd", "-1"), ("--pgd",)),
    Row("probe-samples-negative", VALUE, cmd("probe", "run.h5", "--samples", "-3"), ("--samples",)),
    Row("probe-batch-size-0", VALUE, cmd("probe", "run.h5", "--batch-size", "0"), ("--batch-size",)),
    Row("probe-o-not-h5", VALUE, cmd("probe", "run.h5", "-o", "out.txt"), ("out.txt",)),
    Row("probe-eps-8-linf", VALUE, cmd("probe", "run.h5", "--eps", "8"), (("8/255", "--eps"),)),
    Row("plot2d-grid-1x1", VALUE, cmd("plot2d", "run.h5", "--grid", "1x1"), ("grid",)),
    Row("plot2d-grid-0x5", VALUE, cmd("plot2d", "run.h5", "--grid", "0x5"), ("grid",)),
    Row("plot2d-grid-not-NxM", VALUE, cmd("plot2d", "run.h5", "--grid", "21"), ("grid",)),
    Row("plot2d-grid-huge", VALUE, cmd("plot2d", "run.h5", "--grid", "100000x100000"), ("grid",)),
    Row("plot2d-range-reversed", VALUE, cmd("plot2d", "run.h5", "--range", "1:-1"), ("range",)),
    Row("plot2d-chunk-0", VALUE, cmd("plot2d", "run.h5", "--chunk", "0"), ("--chunk",)),
    Row("plot2d-workers-0", VALUE, cmd("plot2d", "run.h5", "--workers", "0"), ("--workers",)),
    # More processes than CPU cores, refused before torchrun starts. (NCPU + 1 rather than 1000: against
    # code that misses it, 1000 would start 1000 torch processes on this machine.)
    Row("plot2d-workers-above-cores", VALUE, cmd("plot2d", "run.h5", "--workers", str(NCPU + 1)), ("--workers",),
        fast=True, timeout=30),
    Row("plot2d-epoch-every", VALUE, cmd("plot2d", "run.h5", "--epoch", "every:1"), ("every:1",)),
    Row("gap-every-0", VALUE, cmd("gap", "run.h5", "--every", "0"), ("--every",)),
    Row("gap-sharpness-unknown", VALUE, cmd("gap", "run.h5", "--sharpness", "nope"), ("nope",)),
    Row("gap-no-runs", VALUE, cmd("gap"), ("run",)),
    Row("gap-too-few-points", VALUE, cmd("gap", "run.h5", "--every", "1"), ("allow no test", "at least 5")),
    Row("report-too-few-points", VALUE, cmd("report", "run.h5", "--every", "1"), ("allow no test", "at least 5")),
    Row("report-every-0", VALUE, cmd("report", "run.h5", "--every", "0"), ("--every",)),
    Row("report-sharpness-unknown", VALUE, cmd("report", "run.h5", "--sharpness", "nope"), ("nope",)),
    Row("report-no-runs", VALUE, cmd("report"), ("run",)),
    Row("info-every-0", VALUE, raw("info", "run.h5", "--every", "0"), ("--every",)),
    Row("export-epoch-all", VALUE, raw("export", "run.h5", "--epoch", "all", "-o", "out.pt"), ("all",)),
    Row("export-epoch-not-saved", VALUE, raw("export", "run.h5", "--epoch", "999", "-o", "out.pt"), ("999",)),
    Row("download-unknown", VALUE, raw("download", "nope"), ("nope",)),
    Row("download-offline", VALUE, raw("download", "cifar10", "--data-dir", "dl"), ("cifar10", NETWORK), setup="dl",
        skip="online", timeout=60),
    Row("demo-seed-negative", VALUE, raw("demo", "--quick", "--seeds", "0,-1"), ("--seeds",), timeout=60),
    Row("demo-workers-0", VALUE, raw("demo", "--quick", "--workers", "0"), ("--workers", "0"), timeout=60),
    Row("demo-workers-above-cores", VALUE, raw("demo", "--quick", "--workers", "999"), ("--workers 999", "CPU core"),
        timeout=60),
    Row("demo-seeds-repeated", VALUE, raw("demo", "--quick", "--seeds", "1,1"), ("repeats", "1,1"), timeout=60),
    Row("demo-seeds-not-numbers", VALUE, raw("demo", "--quick", "--seeds", "a,b"), ("a,b",), timeout=60),

    # -- 5. bad input files
    Row("info-missing", FILES, raw("info", "missing.h5"), ("missing.h5",)),
    Row("info-text-as-h5", FILES, raw("info", "text.h5"), ("text.h5",)),
    Row("info-foreign-h5", FILES, raw("info", "other.h5"), ("other.h5",)),
    Row("info-no-config", FILES, raw("info", "noconfig.h5"), ("noconfig.h5",)),
    Row("info-config-not-json", FILES, raw("info", "badjson.h5"), ("badjson.h5",)),
    Row("info-version-abc", FILES, raw("info", "vabc.h5"), ("vabc.h5",)),
    Row("info-no-weights", FILES, raw("info", "noweights.h5"), ("noweights.h5",)),
    Row("info-dir", FILES, raw("info", "somedir"), ("somedir",)),
    Row("export-version-99", FILES, raw("export", "v99.h5", "-o", "out.pt"), ("v99.h5", "version")),
    Row("export-config-not-json", FILES, raw("export", "badjson.h5", "-o", "out.pt"), ("badjson.h5",)),
    Row("export-no-weights", FILES, raw("export", "noweights.h5", "-o", "out.pt"), ("noweights.h5",)),
    Row("export-pt-as-run", FILES, raw("export", "model.pt", "-o", "out.pt"), ("model.pt",)),
    Row("export-probe-results-as-run", FILES, raw("export", "probe.h5", "-o", "out.pt"), ("probe.h5",)),
    Row("probe-missing", FILES, cmd("probe", "missing.pt"), ("missing.pt",)),
    Row("probe-text-as-pt", FILES, cmd("probe", "text.pt"), ("text.pt",)),
    Row("probe-text-as-h5", FILES, cmd("probe", "text.h5"), ("text.h5",)),
    Row("probe-foreign-h5", FILES, cmd("probe", "other.h5"), ("other.h5",)),
    Row("probe-no-config", FILES, cmd("probe", "noconfig.h5"), ("noconfig.h5",)),
    Row("probe-version-abc", FILES, cmd("probe", "vabc.h5"), ("vabc.h5",)),
    Row("probe-no-weights", FILES, cmd("probe", "noweights.h5"), ("noweights.h5",)),
    Row("probe-shape-mismatch", FILES, cmd("probe", "shape.h5"), (SHAPE_KEY,)),
    Row("probe-to-other-misfits", FILES, cmd("probe", "run.h5", "--direction", "interpolate", "--to", "shape.h5"), (SHAPE_KEY,)),
    # --epoch all failing half-way: found before the first checkpoint is probed, so nothing is written
    Row("probe-all-last-epoch-misfits", FILES, cmd("probe", "shape_last.h5", "--epoch", "all"), (SHAPE_KEY,)),
    Row("probe-all-last-epoch-corrupt", FILES, cmd("probe", "corrupt_last.h5", "--epoch", "all"), ("corrupt",)),
    Row("probe-all-half-way-keeps-results", FILES, cmd("probe", "corrupt_last.h5", "--epoch", "all", "-o", "probe.h5"),
        ("corrupt",)),
    Row("probe-evil-pickle", FILES, cmd("probe", "evil.pt"), ("pickled",), sole_line=True),
    Row("probe-pt-not-tensors", FILES, cmd("probe", "list.pt"), ("list.pt",)),
    Row("probe-dir", FILES, cmd("probe", "somedir"), ("somedir",)),
    Row("probe-results-as-ckpt", FILES, cmd("probe", "probe.h5"), ("probe.h5",)),
    Row("probe-from-2d-results", FILES, raw("probe", "--from", "p2d.h5"), ("p2d.h5",)),
    Row("plot2d-text-as-pt", FILES, cmd("plot2d", "text.pt"), ("text.pt",)),
    Row("plot2d-config-not-json", FILES, cmd("plot2d", "badjson.h5"), ("badjson.h5",)),
    Row("plot2d-version-99", FILES, cmd("plot2d", "v99.h5"), ("v99.h5", "version")),
    Row("plot2d-shape-mismatch", FILES, cmd("plot2d", "shape.h5"), (SHAPE_KEY,)),
    Row("plot2d-evil-pickle", FILES, cmd("plot2d", "evil.pt"), ("pickled",), sole_line=True),
    Row("plot2d-from-probe-results", FILES, raw("plot2d", "--from", "probe.h5"), ("probe.h5",)),
    Row("gap-missing", FILES, cmd("gap", "missing.h5"), ("missing.h5",)),
    Row("gap-text-as-h5", FILES, cmd("gap", "text.h5"), ("text.h5",)),
    Row("gap-no-config", FILES, cmd("gap", "noconfig.h5"), ("noconfig.h5",)),
    Row("gap-version-abc", FILES, cmd("gap", "vabc.h5"), ("vabc.h5",)),
    Row("gap-probe-results-as-run", FILES, cmd("gap", "probe.h5"), ("probe.h5",)),
    Row("report-foreign-h5", FILES, cmd("report", "other.h5"), ("other.h5",)),
    Row("report-config-not-json", FILES, cmd("report", "badjson.h5"), ("badjson.h5",)),
    Row("report-no-weights", FILES, cmd("report", "noweights.h5"), ("noweights.h5",)),
    Row("report-pt-as-run", FILES, cmd("report", "model.pt"), ("model.pt",)),
    Row("train-resume-text-as-h5", FILES, raw("train-awp", "-o", "text.h5", "--resume"), ("text.h5",)),
    Row("train-resume-no-config", FILES, raw("train-awp", "-o", "noconfig.h5", "--resume"), ("noconfig.h5",)),
    Row("train-resume-version-99", FILES, raw("train-awp", "-o", "v99.h5", "--resume"), ("v99.h5", "version")),
    Row("train-resume-shape-mismatch", FILES, raw("train-awp", "-o", "shape.h5", "--resume"), (SHAPE_KEY,)),

    # -- 6. contradictions
    Row("probe-ckpt-and-from", CONTRA, raw("probe", "run.h5", "--from", "probe.h5"), ("--from",)),
    Row("probe-neither-ckpt-nor-from", CONTRA, raw("probe"), (("CKPT", "--from", "checkpoint"),)),
    Row("probe-pt-epoch-all", CONTRA, cmd("probe", "model.pt", "--epoch", "all"), ("all",)),
    Row("probe-arch-contradicts-run", CONTRA, cmd("probe", "run.h5", "--arch", "preactresnet18"), ("preactresnet18",)),
    Row("plot2d-epoch-all", CONTRA, cmd("plot2d", "run.h5", "--epoch", "all"), ("all",)),
    Row("plot2d-ckpt-and-from", CONTRA, raw("plot2d", "run.h5", "--from", "p2d.h5"), ("--from",)),
    Row("plot2d-dataset-contradicts-pt", CONTRA, cmd("plot2d", "model.pt", "--dataset", "cifar10"), ("cifar10",)),

    # -- 7. landscape eval
    Row("eval-unknown-attack", VALUE, cmd("eval", "run.h5", "--attacks", "pgd20,deepfool"), ("deepfool", "pgdK", "autoattack")),
    Row("eval-attack-twice", VALUE, cmd("eval", "run.h5", "--attacks", "pgd20,pgd20"), ("pgd20", "twice")),
    Row("eval-fgsm-with-steps", VALUE, cmd("eval", "run.h5", "--attacks", "fgsm5"), ("fgsm5",)),
    Row("eval-pgd0", VALUE, cmd("eval", "run.h5", "--attacks", "pgd0"), ("pgd0",)),
    Row("eval-eps-above-1", VALUE, cmd("eval", "run.h5", "--eps", "8"), ("8", "/255")),
    Row("eval-eps-negative", VALUE, cmd("eval", "run.h5", "--eps", "-0.1"), ("-0.1",)),
    Row("eval-samples-above-test-set", VALUE, cmd("eval", "run.h5", "--samples", "100000"), ("100000", "test set")),
    Row("eval-restarts-0", VALUE, cmd("eval", "run.h5", "--restarts", "0"), ("--restarts", "0")),
    Row("eval-aa-version", VALUE, cmd("eval", "run.h5", "--aa-version", "fast"), ("fast", "standard")),
    Row("eval-precision-unknown", VALUE, cmd("eval", "run.h5", "--precision", "fp8"), ("fp8", "fp32", "bf16", "fp16")),
    Row("eval-o-not-json", VALUE, cmd("eval", "run.h5", "-o", "ev.h5"), ("ev.h5", ".json")),
    Row("eval-o-is-run", SAME, cmd("eval", "run.h5", "-o", "run.h5"), ("run.h5",)),
    Row("eval-registry-model-without-ckpt", CONTRA, cmd("eval", "--model", "smallcnn", "--dataset", "digits"), ("smallcnn", "random weights")),
    Row("eval-no-ckpt", CONTRA, cmd("eval"), ("CKPT", "--model")),
    Row("eval-text-as-pt", FILES, cmd("eval", "text.pt"), ("text.pt",)),

    # -- 8. shards of a grid (plot2d --shard K/N, landscape merge, --launcher)
    Row("plot2d-shard-k-above-n", VALUE, cmd("plot2d", "run.h5", "--shard", "3/2"), ("3/2", "K/N", "1 <= K <= N")),
    Row("plot2d-shard-k-0", VALUE, cmd("plot2d", "run.h5", "--shard", "0/2"), ("0/2", "K/N", "1 <= K <= N")),
    Row("plot2d-shard-not-k-of-n", VALUE, cmd("plot2d", "run.h5", "--shard", "abc"), ("abc", "K/N")),
    Row("plot2d-launcher-without-shards", CONTRA, cmd("plot2d", "run.h5", "--launcher", "submitit-local"), ("--launcher", "--shards")),
    Row("plot2d-shard-and-launcher", CONTRA, cmd("plot2d", "run.h5", "--shard", "1/2", "--launcher", "submitit-local", "--shards", "2"),
        ("--shard 1/2", "--launcher")),
    Row("merge-no-shards", VALUE, raw("merge", "out.h5"), ("shard results file", "OUT.h5")),
    Row("merge-out-not-h5", VALUE, raw("merge", "out.txt", "p2d.h5"), ("out.txt", ".h5")),
    Row("merge-out-is-shard", SAME, raw("merge", "p2d.h5", "p2d.h5"), ("p2d.h5",)),
    Row("merge-run-file-as-shard", FILES, raw("merge", "out.h5", "run.h5"), ("run.h5", "landscape results", "--shard K/N")),
    Row("merge-text-as-shard", FILES, raw("merge", "out.h5", "text.h5"), ("text.h5", "landscape results")),
    Row("merge-other-settings", CONTRA, raw("merge", "out.h5", "p2d.h5", "p2d-pgd2.h5"), ("p2d-pgd2.h5", "attack.steps"),
        setup="p2d_pgd2"),

    # -- 9. the menu of sharpness measures (landscape sharpness, gap --measures)
    Row("sharpness-unknown-measure", VALUE, cmd("sharpness", "run.h5", "--measures", "rise,sharpest"), ("sharpest", "hessian-trace")),
    Row("sharpness-no-measure", VALUE, cmd("sharpness", "run.h5", "--measures", ","), ("--measures", "rise")),
    Row("sharpness-params-match-nothing", VALUE, cmd("sharpness", "run.h5", "--params", "layer4.*"), ("layer4.*", "net.0.weight")),
    Row("sharpness-params-only-biases", VALUE, cmd("sharpness", "run.h5", "--params", "*.bias"), ("*.bias", "--include-bn")),
    Row("sharpness-bad-xi", VALUE, cmd("sharpness", "run.h5", "--xi-avg", "-1"), ("--xi-avg", "-1", "> 0")),
    Row("sharpness-bad-eig-method", VALUE, cmd("sharpness", "run.h5", "--eig-method", "qr"), ("--eig-method", "qr", "lanczos")),
    Row("sharpness-bad-reattack", VALUE, cmd("sharpness", "run.h5", "--hessian-reattack", "maybe"), ("--hessian-reattack", "maybe")),
    Row("sharpness-workers", VALUE, cmd("sharpness", "run.h5", "--workers", "2"), ("--workers 2", "one process")),
    Row("sharpness-o-is-input", SAME, cmd("sharpness", "run.h5", "-o", "run.h5", "--overwrite"), ("run.h5",)),
    Row("sharpness-png-is-input", SAME, cmd("sharpness", "run.h5", "--png", "run.h5"), ("run.h5",)),
    Row("sharpness-png-is-results", VALUE, cmd("sharpness", "run.h5", "-o", "s.h5", "--png", "s.h5"), ("s.h5", "results file")),
    Row("sharpness-o-existing-probe", EXISTS, cmd("sharpness", "run.h5", "-o", "p2d.h5"), ("p2d.h5",)),
    Row("gap-unknown-measure", VALUE, cmd("gap", "run.h5", "--measures", "flatness"), ("flatness", "flatness-avg")),
]

COMMANDS = ("train-awp", "info", "export", "probe", "plot2d", "gap", "report", "demo", "download", "presets", "eval", "merge",
            "sharpness")


# ---------------------------------------------------------------------------------------------
# Per-row setups and skips
# ---------------------------------------------------------------------------------------------


def _demo_run(d: Path) -> None:
    (d / DEMO_RUN).parent.mkdir(parents=True)
    shutil.copy2(d / "run.h5", d / DEMO_RUN)


def _readonly(d: Path) -> None:
    """A directory no one may write in: 0555, and where root may mount, a read-only tmpfs over it
    (root ignores permissions, not a read-only file system)."""
    (d / "ro").mkdir()
    (d / "ro").chmod(0o555)
    if os.geteuid() == 0:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(d / "ro")], capture_output=True)


SETUPS = {
    "demo_run": _demo_run,  # the demo's own run file already exists where --report points
    "readonly": _readonly,
    "dl": lambda d: (d / "dl").mkdir(),  # an empty data dir: a half-downloaded file in it would show
    # RGB 8x8 images: the wrong [C, H, W] for digits' [1, 8, 8]
    "rgb_npz": lambda d: __import__("numpy").savez(d / "rgb.npz", x=__import__("numpy").zeros((4, 3, 8, 8), "float32")),
    "p2d_pgd2": lambda d: _p2d_other_steps(d),  # p2d.h5 as if computed with --pgd 2: a shard of other settings
}


def _p2d_other_steps(d: Path) -> None:
    shutil.copy2(d / "p2d.h5", d / "p2d-pgd2.h5")
    with h5py.File(d / "p2d-pgd2.h5", "r+") as f:
        config = json.loads(f.attrs["config"])
        config["attack"]["steps"] = 2
        f.attrs["config"] = json.dumps(config, sort_keys=True)


@functools.lru_cache(maxsize=None)
def _online() -> bool:
    try:
        socket.setdefaulttimeout(5)
        socket.getaddrinfo("www.cs.toronto.edu", 443)
        return True
    except OSError:
        return False
    finally:
        socket.setdefaulttimeout(None)


SKIPS = {
    # tests run as root, where permissions are not enforced
    "writable_ro": lambda d: "a 0555 directory is writable here (root, no read-only mount)" if os.access(d / "ro", os.W_OK) else None,
    "has_cuda": lambda d: "a CUDA GPU is available" if torch.cuda.is_available() else None,
    "online": lambda d: "the network is reachable: the download would start" if _online() else None,
}


# ---------------------------------------------------------------------------------------------
# Fixture files
# ---------------------------------------------------------------------------------------------


class Evil:
    """Unpickling this creates the marker file: proof that a loader ran pickled code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _build_all(runners: "Runners", jobs: list[list[str]], cwd: Path) -> None:
    """Run CLI commands that make fixture files, concurrently; each must succeed."""
    def one(i_args):
        i, args = i_args
        out, err = cwd / f".build{i}.out", cwd / f".build{i}.err"
        rc, _ = runners.run(tuple(args), cwd, out, err, 300)
        return args, rc, out.read_text() + err.read_text()

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        for args, rc, text in pool.map(one, enumerate(jobs)):
            assert rc == 0, f"building the fixture with `landscape {' '.join(args)}` failed:\n{text}"


TINY_RUN = ["--epochs", "2", "--train-size", "40", "--train-eval-size", "40", "--test-size", "40", "--train-steps", "2",
            "--eval-steps", "2", "--save-every", "1", "-q"]


def _forge(src: Path, dst: Path, change) -> None:
    shutil.copy2(src, dst)
    with h5py.File(dst, "r+") as f:
        change(f)


def _reshape_weight(f: h5py.File) -> None:
    for name in f["weights"]:
        g = f["weights"][name]
        if not name.startswith("epoch_") or SHAPE_KEY not in g:
            continue
        old = g[SHAPE_KEY]
        assert old.shape == (32, 16, 3, 3), old.shape
        dtype = old.attrs.get("dtype")
        del g[SHAPE_KEY]
        new = g.create_dataset(SHAPE_KEY, data=np.zeros((32, 16, 5, 5), np.float32))
        if dtype is not None:
            new.attrs["dtype"] = dtype


def _reshape_last(f: h5py.File) -> None:
    """Only the last epoch stops fitting: `probe --epoch all` must refuse before the first epoch is probed."""
    g = f["weights"][f"epoch_{int(f.attrs['last_epoch']):04d}"]
    dtype = g[SHAPE_KEY].attrs.get("dtype")
    del g[SHAPE_KEY]
    g.create_dataset(SHAPE_KEY, data=np.zeros((32, 16, 5, 5), np.float32)).attrs["dtype"] = dtype


def _corrupt_last(path: Path) -> None:
    """Flip bytes inside one checksummed weight of the last epoch, behind HDF5's back (fletcher32 catches it)."""
    with h5py.File(path, "r") as f:
        ds = f["weights"][f"epoch_{int(f.attrs['last_epoch']):04d}"][SHAPE_KEY]
        offset = ds.id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(offset + 16)
        fh.write(b"\xff" * 64)


def make_fixture(base: Path, runners: "Runners") -> Path:
    """The files every row directory starts with, in base/fixture."""
    build, fx = base / "build", base / "fixture"
    build.mkdir()
    fx.mkdir()
    _build_all(runners, [["train-awp", *TINY_RUN, "-o", "run.h5"],
                         ["train-awp", *TINY_RUN, "--seed", "1", "-o", "run2.h5"]], build)
    _build_all(runners, [
        ["export", "run.h5", "--epoch", "last", "-o", "model.pt"],
        ["probe", "run.h5", "--dirs", "1", "--alphas", "-1:1:5", "--samples", "20", "--pgd", "1", "-o", "probe.h5", "-q"],
        ["plot2d", "run.h5", "--grid", "3x3", "--samples", "20", "--pgd", "1", "-o", "p2d.h5", "-q"],
    ], build)
    for name in ("run.h5", "run2.h5", "model.pt", "probe.h5", "p2d.h5"):
        shutil.copy2(build / name, fx / name)
    run = fx / "run.h5"

    # files that are not what their names say
    (fx / "text.pt").write_text("this is a text file, not a checkpoint\n")
    (fx / "text.h5").write_text("this is a text file, not HDF5\n")
    with open(fx / "evil.pt", "wb") as fh:  # a plain pickle whose loading would run code
        pickle.dump({"state_dict": {"w": [0.0]}, "payload": Evil(str(base / MARKER_NAME))}, fh)
    torch.save([1, 2, 3], fx / "list.pt")  # loads with weights_only=True, but holds no tensors
    with h5py.File(fx / "other.h5", "w") as f:  # HDF5, not ours
        f.create_dataset("x", data=np.arange(3))
        f.attrs["title"] = "someone else's data"

    # forged run files
    _forge(run, fx / "noconfig.h5", lambda f: f.attrs.__delitem__("config"))
    _forge(run, fx / "badjson.h5", lambda f: f.attrs.__setitem__("config", "not json"))
    _forge(run, fx / "v99.h5", lambda f: f.attrs.__setitem__("format_version", 99))
    _forge(run, fx / "vabc.h5", lambda f: f.attrs.__setitem__("format_version", "abc"))
    _forge(run, fx / "noweights.h5", lambda f: f.__delitem__("weights"))
    _forge(run, fx / "shape.h5", _reshape_weight)
    _forge(run, fx / "shape_last.h5", _reshape_last)
    shutil.copy2(run, fx / "corrupt_last.h5")
    _corrupt_last(fx / "corrupt_last.h5")

    # configs
    (fx / "eps_true.toml").write_text("eps = true\n")
    (fx / "unknown.toml").write_text("bogus-key = 1\n")
    (fx / "binary.toml").write_bytes(bytes(range(256)) * 4)
    (fx / "confdir").mkdir()

    # places
    (fx / "sub").mkdir()
    (fx / "somedir").mkdir()
    (fx / "outdir.h5").mkdir()  # a directory with a results-file name
    (fx / "link.h5").symlink_to("run.h5")
    (fx / "notadir").write_text("a regular file\n")
    (fx / "existing.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"the user's own picture" * 10)
    (fx / "existing.html").write_text("<html><body>the user's own page</body></html>\n")
    (fx / "figs").mkdir()
    (fx / "figs" / "gap-curves.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"the user's own figure" * 10)
    return fx


# ---------------------------------------------------------------------------------------------
# Running a row
# ---------------------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under `root` (directories, links, files with their sha256), nothing ignored."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir",)
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", hashlib.sha256(p.read_bytes()).hexdigest())
            else:
                out[rel] = ("other", stat.S_IFMT(st.st_mode))
    return out


@dataclass
class Result:
    rc: int | None = None
    stdout: str = ""
    stderr: str = ""
    wall: float = 0.0
    timed_out: bool = False
    created: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    skipped: str | None = None


def _descendants(pid: int) -> list[int]:
    """Processes below `pid` (children of children...), from /proc."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def _kill_tree(pid: int) -> None:
    """A row's CLI process, its session and everything it started (torchrun workers may sit in sessions
    of their own)."""
    for p in [pid, *_descendants(pid)]:
        try:
            os.kill(p, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    _kill_group(pid)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)  # the row's own session: the CLI and anything left in it
    except (ProcessLookupError, PermissionError):
        pass


# A fork server: a fresh `python` that imports torch and the project once, then, per row, forks a child
# that starts a new session, enters the row's directory, points fds 0/1/2 at /dev/null and two files, and
# runs the CLI as `python -m cli ARGS` does (runpy, run_name="__main__"), with the interpreter's exit codes
# and traceback printing. It saves ~2 s of CPU per row (importing torch, and tearing it down at exit);
# BAD_INPUT_FRESH=1 runs every row as a plain `sys.executable -m cli` instead.
SERVER = r"""
import atexit, importlib, json, os, resource, runpy, sys, threading
for m in sys.argv[1].split(","):
    try:
        importlib.import_module(m)
    except BaseException:
        pass  # the row's own run will meet the same problem
with open("/proc/self/status") as fh:
    base_kb = int(fh.read().split("VmSize:")[1].split()[0])
for line in sys.stdin:
    req = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.setsid()
        os.chdir(req["cwd"])
        for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, req["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                (2, req["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
            new = os.open(path, flags, 0o644)
            os.dup2(new, fd)
            os.close(new)
        sys.stdin = open(0, "r", closefd=False)
        limit = (base_kb + req["extra_kb"]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        sys.argv = ["cli", *req["argv"]]
        try:
            runpy.run_module("cli", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:  # as the interpreter treats it
            if e.code is None or isinstance(e.code, int):
                code = e.code or 0
            else:
                print(e.code, file=sys.stderr)
                code = 1
        except BaseException:
            sys.excepthook(*sys.exc_info())
            code = 1
        # The interpreter's shutdown minus tearing down every module (1.4 s with torch loaded): wait for
        # threads, run atexit handlers (weakref.finalize, tempfile, h5py), flush.
        try:
            threading._shutdown()
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)
"""
PRELOAD = ("torch,numpy,h5py,typer,rich.console,rich.progress,rich.table,cli,awp.config,awp.trainconfig,"
           "awp.store,awp.train,awp.data,awp.models,awp.runinfo,awp.evaluate,landscape.storage.sources,landscape.commands.probe,"
           "landscape.commands.plot2d,landscape.commands.analysis,landscape.commands.report,landscape.commands.gap,landscape.commands.demo,landscape.pipeline.dist,"
           "landscape.figures.study,matplotlib.pyplot,plotly.graph_objects")
FRESH = os.environ.get("BAD_INPUT_FRESH", "") not in ("", "0")
CHILD_EXTRA_KB = 3_000_000  # address space a forked row may add to the server's


class ForkServer:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, PRELOAD], cwd=ROOT, text=True,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)},
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def run(self, argv: tuple[str, ...], cwd: Path, out: Path, err: Path, timeout: float) -> tuple[int | None, bool]:
        """(exit status, timed out) of one CLI run in a forked child."""
        req = {"argv": list(argv), "cwd": str(cwd), "out": str(out), "err": str(err), "extra_kb": CHILD_EXTRA_KB}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        pid = json.loads(self._reply())["pid"]
        fired = threading.Event()

        def kill() -> None:
            fired.set()
            _kill_tree(pid)

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            rc = json.loads(self._reply())["rc"]
        finally:
            timer.cancel()
        _kill_group(pid)  # leftovers of a launcher that exited
        return (None if fired.is_set() else rc), fired.is_set()

    def _reply(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server exited with status {self.proc.wait()}")
        return line

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _run_fresh(argv: tuple[str, ...], cwd: Path, out: Path, err: Path, timeout: float) -> tuple[int | None, bool]:
    """One CLI run as `sys.executable -m cli`, under `ulimit -v`."""
    cmdline = ["/bin/sh", "-c", f'ulimit -v {MEM_LIMIT_KB} && exec "$0" "$@"', sys.executable, "-m", "cli", *argv]
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen(cmdline, cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                stdin=subprocess.DEVNULL, stdout=fo, stderr=fe, start_new_session=True)
        try:
            rc, timed_out = proc.wait(timeout=timeout), False
        except subprocess.TimeoutExpired:
            _kill_tree(proc.pid)
            proc.wait()
            rc, timed_out = None, True
        _kill_group(proc.pid)
    return rc, timed_out


class Runners:
    """WORKERS fork servers, each running one CLI command at a time; under BAD_INPUT_FRESH=1, fresh
    `python -m cli` processes instead."""

    def __init__(self, n: int) -> None:
        self.free: queue.Queue[ForkServer] = queue.Queue()
        self.all = [] if FRESH else [ForkServer() for _ in range(n)]  # they import torch concurrently
        for server in self.all:
            self.free.put(server)

    def run(self, argv: tuple[str, ...], cwd: Path, out: Path, err: Path, timeout: float) -> tuple[int | None, bool]:
        if FRESH:
            return _run_fresh(argv, cwd, out, err, timeout)
        server = self.free.get()
        try:
            return server.run(argv, cwd, out, err, timeout)
        finally:
            self.free.put(server)

    def close(self) -> None:
        for server in self.all:
            server.close()


def run_row(row: Row, runners: Runners, fixture: Path, rows_dir: Path, logs_dir: Path) -> Result:
    d = rows_dir / row.id
    shutil.copytree(fixture, d, symlinks=True)
    try:
        if row.setup:
            SETUPS[row.setup](d)
        reason = SKIPS[row.skip](d) if row.skip else None
        if reason:
            return Result(skipped=reason)
        before = snapshot(d)
        out, err = logs_dir / f"{row.id}.out", logs_dir / f"{row.id}.err"
        t0 = time.monotonic()
        rc, timed_out = runners.run(row.argv, d, out, err, row.timeout)
        wall = time.monotonic() - t0
        after = snapshot(d)
        return Result(
            rc=rc, stdout=out.read_text(errors="replace"), stderr=err.read_text(errors="replace"), wall=wall,
            timed_out=timed_out, created=sorted(after.keys() - before.keys()),
            removed=sorted(before.keys() - after.keys()),
            changed=sorted(k for k in before.keys() & after.keys() if before[k] != after[k]),
        )
    finally:
        if os.path.ismount(d / "ro"):
            subprocess.run(["umount", "-l", str(d / "ro")], capture_output=True)
        for dirpath, dirnames, _ in os.walk(d):  # undo chmod 555 so the directory can go
            for name in dirnames:
                p = Path(dirpath) / name
                if not p.is_symlink():
                    p.chmod(0o755)
        shutil.rmtree(d, ignore_errors=True)


def problems(row: Row, r: Result) -> list[str]:
    """What is wrong with a row's outcome, one short phrase each (empty: the row passes)."""
    out: list[str] = []
    err_lines = [l for l in r.stderr.splitlines() if l.strip()]
    all_lines = err_lines + [l for l in r.stdout.splitlines() if l.strip()]
    errors = [l for l in err_lines if l.startswith("error: ")]
    if r.timed_out:
        out.append(f"timed out after {row.timeout:.0f} s")
    elif r.rc != 2:
        out.append(f"exit status {r.rc}, not 2")
    if "Traceback" in r.stderr or "Traceback" in r.stdout:
        out.append("a traceback: " + (err_lines[-1] if err_lines else ""))
    if len(errors) != 1:
        out.append(f"{len(errors)} lines starting with 'error: ' on stderr")
    warnings = [i for i, l in enumerate(err_lines) if l.lower().startswith("warning:")]
    if warnings and not (row.warning and warnings == [0] and len(warnings) == 1):
        out.append(f"unexpected warning line {err_lines[warnings[0]]!r}")
    limit = 1 if row.sole_line else 3
    if len(all_lines) > limit:
        out.append(f"{len(all_lines)} non-empty lines of output (at most {limit})")
    if errors:
        low = errors[0].lower()
        for group in row.need:
            alts = (group,) if isinstance(group, str) else tuple(group)
            if not any(a.lower() in low for a in alts):
                out.append(f"error line lacks {' or '.join(map(repr, alts))}")
    for what, paths in (("created", r.created), ("removed", r.removed), ("changed", r.changed)):
        if paths:
            more = f" (+{len(paths) - 5} more)" if len(paths) > 5 else ""
            out.append(f"{what} {', '.join(paths[:5])}{more}")
    if row.fast and r.wall > FAST_S:
        out.append(f"took {r.wall:.1f} s: not refused before compute (< {FAST_S:.0f} s)")
    return out


# ---------------------------------------------------------------------------------------------
# Fixtures and tests
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runners():
    pool = Runners(WORKERS)
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, runners):
    base = tmp_path_factory.mktemp("bad_input")
    return base, make_fixture(base, runners)


@pytest.fixture(scope="module")
def results(workspace, runners) -> dict[str, Result]:
    base, fixture = workspace
    rows_dir, logs_dir = base / "rows", base / "logs"
    rows_dir.mkdir()
    logs_dir.mkdir()
    # the rows most likely to run long first, so they overlap with the many short ones
    order = sorted(ROWS, key=lambda r: -r.timeout if r.argv[0] in ("demo", "download") else 0)
    only = os.environ.get("BAD_INPUT_ONLY")  # a developer's shortcut: the rows whose id contains it
    order = [r for r in order if not only or only in r.id]
    with concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS) as pool:
        futures = {row.id: pool.submit(run_row, row, runners, fixture, rows_dir, logs_dir) for row in order}
        return {rid: f.result() for rid, f in futures.items()}


def test_table():
    ids = [r.id for r in ROWS]
    assert len(ids) == len(set(ids)), "duplicate row ids"
    assert len(ROWS) >= 70
    assert {r.argv[0] for r in ROWS} == set(COMMANDS)
    for r in ROWS:
        assert r.need, f"{r.id}: every row names what its error line must contain"
        assert r.setup is None or r.setup in SETUPS, r.id
        assert r.skip is None or r.skip in SKIPS, r.id


@pytest.mark.parametrize("row", ROWS, ids=[f"{r.family}/{r.id}" for r in ROWS])
def test_bad_input(row: Row, results):
    if row.id not in results:
        pytest.skip("not among the rows of BAD_INPUT_ONLY")
    r = results[row.id]
    if r.skipped:
        pytest.skip(r.skipped)
    found = problems(row, r)
    tail = "\n".join((r.stderr.strip().splitlines() or [""])[-3:])
    assert not found, (f"landscape {' '.join(row.argv)}\n  " + "\n  ".join(found)
                       + f"\n  stderr (last lines): {tail}\n  ({r.wall:.1f} s)")


def test_evil_payload_works(tmp_path):
    """The check below means something: unpickling an Evil does leave the marker."""
    pickle.loads(pickle.dumps(Evil(str(tmp_path / MARKER_NAME))))
    assert (tmp_path / MARKER_NAME).exists()


def test_pickle_never_unpickled(workspace, results):
    base, _ = workspace
    hits = [p for p in base.rglob(MARKER_NAME)] + [f"{rid}: {p}" for rid, r in results.items() for p in r.created
                                                   if MARKER_NAME in p]
    assert not hits, f"evil.pt was unpickled: {hits}"
