"""Where outputs go and how they are written: checked before any compute, written atomically, and
held by one process at a time.

One rule for every output of every command (`check_output`):
- an output that is the same file as an input is refused, with or without --overwrite;
- a run file (from `train-awp`) is only ever replaced by a run file;
- an existing file is replaced only with --overwrite, unless it is the toolkit's own output of the
  same command on the same inputs (it carries that provenance), which the command may regenerate,
  or a results file of the kind being written, which is resumed rather than replaced;
- a directory, a parent that is a file, or a place that cannot be written is refused up front.

Writes go to a temporary file that is moved into place (`atomic_write`); a failing write (a full
disk, a read-only file system) removes the temporary file, leaves the previous file as it was and
becomes one `UserError` line. `exclusive` is an advisory lock beside a file that a long job writes.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from awp.errors import UserError

RUN_FORMAT = "awp-landscape-run"  # awp.store.FORMAT, repeated here so this module imports nothing heavy


# ---------------------------------------------------------------------------------------------
# What is at a path
# ---------------------------------------------------------------------------------------------


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when `a` and `b` name one file (through symlinks, `..` and hard links) or one future path."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist (yet): compare where they would be
        return os.path.realpath(a) == os.path.realpath(b)


def hdf5_format(path: str | Path) -> str | None:
    """The `format` attribute of an HDF5 file (ours all carry one), '' for other HDF5, None if not HDF5."""
    import h5py

    try:
        if not h5py.is_hdf5(path):
            return None
        with h5py.File(path, "r") as f:
            return str(f.attrs.get("format", ""))
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# Provenance: which of the toolkit's commands wrote a figure or page, from which inputs
# ---------------------------------------------------------------------------------------------

GENERATOR = "awp-landscape"
_PROVENANCE: contextvars.ContextVar[str | None] = contextvars.ContextVar("awp_provenance", default=None)


def provenance(command: str, inputs: Iterable[str | Path], out_dir: str | Path) -> str:
    """'probe:3f2a...': the command and a hash of its inputs relative to where the output lives, so the
    tag survives moving the whole folder (a fresh clone) but not a change of inputs."""
    import hashlib

    rel = sorted(os.path.relpath(os.path.abspath(p), os.path.abspath(out_dir)) for p in inputs)
    return f"{command}:{hashlib.sha256(chr(0).join(rel).encode()).hexdigest()[:16]}"  # ASCII for PNG text


@contextlib.contextmanager
def signed(tag: str) -> Iterator[None]:
    """Figures and pages written inside carry `tag` (PNG text chunk, HTML meta), so a rerun of the
    same command may regenerate them without --overwrite."""
    token = _PROVENANCE.set(tag)
    try:
        yield
    finally:
        _PROVENANCE.reset(token)


def current_tag() -> str | None:
    return _PROVENANCE.get()


def png_metadata() -> dict[str, str]:
    """PNG text chunks for matplotlib's `savefig(metadata=...)`."""
    tag = current_tag()
    return {"Software": GENERATOR, **({"Provenance": tag} if tag else {})}


def html_signature() -> str:
    """`<meta>` tags that go right after `<head>` of every page we write."""
    import html

    tag = current_tag()
    meta = f'<meta name="generator" content="{GENERATOR}">'
    return meta + (f'<meta name="{GENERATOR}-provenance" content="{html.escape(tag, quote=True)}">' if tag else "")


def sign_html(page: str) -> str:
    """Insert `html_signature()` after the first `<head...>` tag of a full page."""
    i = page.find("<head")
    j = page.find(">", i) if i >= 0 else -1
    return page if j < 0 else page[: j + 1] + html_signature() + page[j + 1 :]


def _png_text(data: bytes) -> dict[str, str]:
    """tEXt chunks of a PNG (matplotlib writes them before the image data)."""
    import struct

    out, i = {}, 8
    while i + 8 <= len(data):
        n, kind = struct.unpack(">I4s", data[i : i + 8])
        if kind == b"tEXt":
            key, _, value = data[i + 8 : i + 8 + n].partition(b"\x00")
            out[key.decode("latin-1")] = value.decode("latin-1")
        if kind in (b"IDAT", b"IEND"):
            break
        i += 12 + n
    return out


def read_provenance(path: str | Path) -> str | None:
    """The provenance tag a figure or page of ours carries; None for anything else."""
    import html
    import re

    path = Path(path)
    try:
        with path.open("rb") as fh:
            head = fh.read(1 << 16)
    except OSError:
        return None
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png_text(head).get("Provenance")
    m = re.search(rb'<meta name="' + GENERATOR.encode() + rb'-provenance" content="([^"]*)">', head)
    return html.unescape(m.group(1).decode("utf-8", "replace")) if m else None


# ---------------------------------------------------------------------------------------------
# The one output rule, checked before compute
# ---------------------------------------------------------------------------------------------


def _check_creatable(folder: Path, path: Path, flag: str) -> None:
    """`folder` (the folder `path` goes in) exists or can be made: its nearest existing ancestor is a
    directory this process may write in (missing folders are created when writing)."""
    anc = folder
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise UserError(f"{flag} {str(path)!r}: {str(anc)!r} is a file, not a directory")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {str(path)!r}: cannot write in {str(anc)!r} (read-only or no permission)")


def check_location(path: str | Path, flag: str) -> Path:
    """A file can be created at `path`: it is not a directory, and its folder can be written."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {str(path)!r} is a directory; give a file path inside it")
    _check_creatable(path.parent, path, flag)
    return path


def check_dir(path: str | Path, flag: str) -> Path:
    """A directory that exists or can be created, and can be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {str(path)!r} is a file, not a directory")
    _check_creatable(path, path, flag)
    return path


def check_output(
    path: str | Path,
    flag: str,
    *,
    inputs: Iterable[str | Path] = (),
    overwrite: bool = False,
    writes: str = "file",
    resumes: str | tuple[str, ...] | None = None,
    tag: str | None = None,
) -> Path:
    """Apply the output rule of this module to `path` before any compute; returns `path`.

    `writes` names what will be written (for messages; "run" for run files), `resumes` the HDF5
    format whose existing file is continued rather than replaced, `tag` the provenance under which
    an existing figure or page of ours may be regenerated."""
    path = Path(path)
    for inp in inputs:
        if same_file(path, inp):
            raise UserError(f"{flag} {str(path)!r} is the input {str(inp)!r} itself; choose another path")
    check_location(path, flag)
    if not path.exists():
        return path
    fmt = hdf5_format(path)
    if fmt == RUN_FORMAT and writes != "run":
        raise UserError(f"{flag} {str(path)!r} is a training run file; it is never replaced by a {writes} "
                        f"(not even with --overwrite); choose another path")
    if resumes is not None and fmt in ((resumes,) if isinstance(resumes, str) else resumes):
        return path
    if overwrite:
        return path
    if tag is not None and read_provenance(path) == tag:
        return path
    raise UserError(f"{flag} {str(path)!r} already exists; pass --overwrite to replace it, or choose another path")


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def write_failure(path: str | Path, e: OSError, kept: str = "") -> UserError:
    """One line for an OSError while writing `path`: what happened, and that the old file is kept."""
    name = errno.errorcode.get(e.errno or 0, "")
    reason = os.strerror(e.errno) if e.errno else (str(e).splitlines()[0] if str(e) else type(e).__name__)
    if e.errno is None and "errno = 28" in str(e):  # HDF5 wraps the system error in its own text
        reason, name = os.strerror(errno.ENOSPC), "ENOSPC"
    hint = kept or "any previous version of it is unchanged"
    return UserError(f"could not write {str(path)!r}: {reason}{f' ({name})' if name else ''}; {hint}")


def is_write_failure(e: BaseException) -> bool:
    """OSErrors that a full disk or a read-only place cause (h5py reports them without an errno)."""
    if not isinstance(e, OSError):
        return False
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO):
        return True
    text = str(e)
    return e.errno is None and any(s in text for s in ("write failed", "errno = 28", "No space left", "Can't write"))


def tmp_path(path: str | Path) -> Path:
    """The one temporary name of `path` (a second writer is kept out by `exclusive`)."""
    path = Path(path)
    return path.with_name(path.name + ".tmp")


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # directories on some file systems
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], Any], *, kept: str = "") -> Path:
    """Call `write(tmp)` and move `tmp` onto `path`; any failure removes `tmp` and leaves `path` as it
    was; an OSError from a full or read-only disk becomes one `UserError` line."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if is_write_failure(e):
            raise write_failure(path, e, kept) from None  # type: ignore[arg-type]
        raise
    with contextlib.suppress(OSError):
        fsync_path(path.parent.resolve())
    return path


# ---------------------------------------------------------------------------------------------
# One writer at a time
# ---------------------------------------------------------------------------------------------


def lock_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".lock")


_HELD: dict[str, int] = {}  # lock files this process holds (re-entrant within a process)


def _holder(lock: Path) -> str:
    try:
        info = json.loads(lock.read_text())
        return (f"pid {info.get('pid')} on {info.get('host')}, `{info.get('command')}`, "
                f"since {info.get('since')}")
    except (OSError, ValueError):
        return "another process"


@contextlib.contextmanager
def exclusive(path: str | Path) -> Iterator[None]:
    """Hold an advisory lock (`flock` on `<path>.lock`) while writing `path`; a second process is
    refused at once, naming the holder. The lock dies with its process, so a kill -9 never leaves
    `path` locked; the lock file is removed when released."""
    import fcntl

    lock = lock_path(path)
    key = os.path.realpath(lock)
    if key in _HELD:
        yield
        return
    while True:
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise write_failure(lock, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise UserError(f"{str(path)!r} is being written by another process ({_holder(lock)}); "
                            f"wait for it to finish or stop it") from None
        try:  # the file we locked must still be the one at `lock` (its holder may have just removed it)
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(["landscape", *sys.argv[1:]]),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with contextlib.suppress(OSError):  # who holds it is for messages only; a full disk must not stop us here
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
    _HELD[key] = fd
    try:
        yield
    finally:
        del _HELD[key]
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)
