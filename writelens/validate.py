"""Cheap argument checks shared by the public entry points and the CLI (no forward passes, no model state).

Each check returns the normalised value or raises a named error from :mod:`writelens.errors` whose message says
what was wrong and what to pass instead.
"""

from __future__ import annotations

import math
import operator
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from writelens.errors import DeviceUnavailableError, OutputDirError

__all__ = ["as_int", "check_int", "check_number", "check_choice", "check_bool", "check_float_dtype", "check_device",
           "check_out_dir"]


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


def check_int(value: Any, name: str, error: type[Exception], lo: int | None = None, hi: int | None = None, *,
              allow_none: bool = False) -> int | None:
    """``value`` as an int in ``[lo, hi]`` (:func:`as_int` first; None passes when ``allow_none``), else ``error``
    naming ``name`` and the range."""
    if value is None and allow_none:
        return None
    v = as_int(value, name, error)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        where = (f"in {lo}..{hi}" if lo is not None and hi is not None else f">= {lo}" if lo is not None
                 else f"<= {hi}")
        raise error(f"{name}={v} is out of range; pass an integer {where}" + (" (or None)" if allow_none else "")
                    + ".")
    return v


def check_number(value: Any, name: str, error: type[Exception], lo: float | None = None, hi: float | None = None, *,
                 lo_open: bool = False, hi_open: bool = False, allow_none: bool = False) -> float | None:
    """``value`` as a finite float in the range (open or closed ends; None passes when ``allow_none``); strings,
    bools, NaN and inf raise ``error`` naming ``name``."""
    if value is None and allow_none:
        return None
    if isinstance(value, (str, bytes, bool)):
        raise error(f"{name} must be a number, got {value!r}.")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise error(f"{name} must be a number, got {value!r}.") from None
    if not math.isfinite(v):
        raise error(f"{name}={v} is not finite; pass a finite number.")
    low_bad = lo is not None and (v <= lo if lo_open else v < lo)
    high_bad = hi is not None and (v >= hi if hi_open else v > hi)
    if low_bad or high_bad:
        parts = ([f"{'>' if lo_open else '>='} {lo:g}"] if lo is not None else []) + (
            [f"{'<' if hi_open else '<='} {hi:g}"] if hi is not None else [])
        raise error(f"{name}={v:g} is out of range; pass a number {' and '.join(parts)}.")
    return v


def check_choice(value: Any, name: str, choices: Sequence[Any], error: type[Exception]) -> Any:
    """``value`` if it is one of ``choices``, else ``error`` listing them."""
    if not any(value == c and type(value) is type(c) for c in choices):
        raise error(f"{name}={value!r} is not one of {', '.join(repr(c) for c in choices)}.")
    return value


def check_bool(value: Any, name: str, error: type[Exception]) -> bool:
    """``value`` if it is a bool (numpy bools pass), else ``error`` (a string such as ``"no"`` is truthy: refused)."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    raise error(f"{name} must be True or False, got {value!r}.")


def check_float_dtype(dtype: Any, name: str, error: type[Exception], *, allow_none: bool = False) -> Any:
    """A floating-point ``torch.dtype`` (or a string naming one, e.g. ``"bfloat16"``, returned as the dtype); None
    passes when ``allow_none``."""
    import torch

    if dtype is None and allow_none:
        return None
    resolved = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise error(f"{name}={dtype!r} is not a floating-point torch dtype; pass torch.float32, torch.bfloat16, "
                    "torch.float16 (or their names).")
    return resolved


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
