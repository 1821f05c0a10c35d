"""Cheap argument checks shared by the public entry points and the CLI (no forward passes, no model state).

Each check returns the normalised value or raises a named error from :mod:`writelens.errors` whose message says
what was wrong and what to pass instead.
"""

from __future__ import annotations

import operator
import os
import tempfile
from pathlib import Path
from typing import Any

from writelens.errors import DeviceUnavailableError, OutputDirError

__all__ = ["as_int", "check_device", "check_out_dir"]


def as_int(value: Any, name: str, error: type[Exception]) -> int:
    """``value`` as a Python int: ints, numpy integers and 0-d integer tensors pass; bools, floats (even 3.0) and
    strings raise ``error`` naming ``name`` (so a position is never silently truncated)."""
    if isinstance(value, bool):
        raise error(f"{name} must be an integer, got the bool {value!r}.")
    try:
        return operator.index(value)
    except TypeError:
        pass
    item = getattr(value, "item", None)  # 0-d tensors / arrays of an integer dtype
    if callable(item) and getattr(value, "ndim", None) == 0:
        v = item()
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    kind = type(value).__name__
    raise error(f"{name} must be an integer, got {value!r} ({kind}); pass int(...) of a whole number.")


def check_device(device: Any, what: str = "device") -> str:
    """``device`` as a string torch accepts and this machine has; :class:`DeviceUnavailableError` otherwise
    (a CUDA device on a CPU-only build or beyond ``torch.cuda.device_count()``, an MPS device without MPS, a string
    that is not a device)."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceUnavailableError(
            f"{what}={device!r} is not a device; use 'cpu', 'cuda', 'cuda:N' or 'mps'.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build of torch" if torch.version.cuda is None else "no visible CUDA device"
            raise DeviceUnavailableError(f"{what}={device!r} needs CUDA, but this machine has {build}; use 'cpu' "
                                         "(or install a CUDA build of torch on a machine with a GPU).")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise DeviceUnavailableError(f"{what}={device!r}: this machine has {count} CUDA device(s) "
                                         f"(cuda:0..cuda:{count - 1}).")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise DeviceUnavailableError(f"{what}={device!r} needs Apple MPS, which this machine lacks; use 'cpu'.")
    elif dev.type != "cpu":
        raise DeviceUnavailableError(f"{what}={device!r}: writelens runs on 'cpu', 'cuda[:N]' or 'mps'.")
    return str(dev)


def check_out_dir(path: str | os.PathLike, what: str = "out_dir") -> Path:
    """``path`` as a Path to a folder that exists or can be created and is writable; :class:`OutputDirError` if
    it is a file, sits under a file, or it (or its nearest existing parent) is read-only. Creates no folder (a
    probe file is made and removed at once)."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise OutputDirError(f"{what}={str(p)!r} is a file, not a folder; pass a folder path (created if missing).")
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputDirError(f"{what}={str(p)!r} lies under the file {str(probe)!r}; pass a folder path.")
    if not _writable(probe):
        where = "it" if probe == p else f"its parent {str(probe)!r}"
        raise OutputDirError(f"{what}={str(p)!r} is not writable ({where} is read-only for this user); pass a "
                             "folder you can write to.")
    return p


def _writable(folder: Path) -> bool:
    """Whether a file can be created in ``folder`` (tried for real: permission bits do not bind root, and some
    folders, e.g. under /proc, refuse files whatever their bits say); the probe file is removed at once."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".writelens-probe-")
    except OSError:
        return False
    os.close(fd)
    os.unlink(name)
    return True
