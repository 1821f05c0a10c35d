"""What every experiment shares: JSON round-trips of typed dataclasses, the result base class, and progress bars.

Every experiment is ``run(lens, ..., options) -> Result`` where ``options`` is a typed, JSON-serialisable dataclass
(the CLI is generated from its simple fields) and ``Result`` records the options, the seeds and every per-item
number, so that ``Result.from_json(result.to_json())`` gives the same object back and ``result.summary()`` gives the
headline numbers as a flat, JSON-friendly dict.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")

__all__ = ["to_jsonable", "from_jsonable", "JsonMixin", "ExperimentResult", "progress", "finite"]


def finite(x: float | None) -> float | None:
    """``x`` as a float, or None when it is missing or not finite (JSON has no NaN)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, tuples, numpy and torch values → plain JSON types (NaN/inf become None)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    torch = sys.modules.get("torch")  # (no tensor can exist before torch is imported: options stay torch-free)
    if torch is not None and isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return finite(obj)
    if obj is None or isinstance(obj, str):
        return obj
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def from_jsonable(tp: Any, value: Any) -> Any:
    """Rebuild a value of type ``tp`` (dataclass, list/tuple/dict of them, Optional, Literal, primitives)."""
    if value is None:
        return None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any or tp is typing.Any:
        return value
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        known = {f.name: f for f in dataclasses.fields(tp)}
        kwargs = {name: from_jsonable(hints[name], v) for name, v in value.items() if name in known}
        return tp(**kwargs)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        for option in options:
            try:
                return from_jsonable(option, value)
            except (TypeError, ValueError, AttributeError):
                continue
        return value
    if origin is typing.Literal:
        return value
    if origin in (list, typing.List):  # noqa: UP006
        return [from_jsonable(args[0] if args else Any, v) for v in value]
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_jsonable(args[0], v) for v in value)
        if args:
            return tuple(from_jsonable(a, v) for a, v in zip(args, value, strict=False))
        return tuple(value)
    if origin is dict:
        vt = args[1] if args else Any
        return {k: from_jsonable(vt, v) for k, v in value.items()}
    if tp is float:
        if isinstance(value, (list, dict, str)):
            raise TypeError("not a float")
        return float(value)
    if tp is int:
        if isinstance(value, (list, dict, str)) or (isinstance(value, float) and not value.is_integer()):
            raise TypeError("not an int")
        return int(value)
    if tp is bool or tp is str:
        if not isinstance(value, tp):
            raise TypeError(f"not a {tp.__name__}")
        return value
    return value


class JsonMixin:
    """``to_dict`` / ``to_json`` / ``from_dict`` / ``from_json`` for a dataclass (the round trip is exact up to
    float formatting; non-finite floats are written as null)."""

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)

    def to_json(self, path: str | Path | None = None, indent: int | None = 1) -> str:
        """The JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=indent, allow_nan=False)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        return from_jsonable(cls, data)

    @classmethod
    def from_json(cls: type[T], text_or_path: str | Path) -> T:
        """From JSON text or from a file holding it."""
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text_or_path).read_text()
        return cls.from_dict(json.loads(text))


class ExperimentResult(JsonMixin):
    """Base of the result dataclasses: ``summary()`` gives the headline numbers (flat dict, JSON-friendly);
    ``str(result)`` prints them."""

    def summary(self) -> dict[str, Any]:  # pragma: no cover - every result overrides it
        raise NotImplementedError

    def __str__(self) -> str:
        rows = []
        for key, value in self.summary().items():
            if isinstance(value, float):
                value = f"{value:.4g}"
            rows.append(f"  {key}: {value}")
        return f"{type(self).__name__}\n" + "\n".join(rows)


def progress(iterable, *, total: int | None = None, desc: str = "", enabled: bool = True):
    """A tqdm bar (auto: notebook or terminal) over ``iterable``; a no-op when disabled."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)
