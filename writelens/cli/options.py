"""The option generator behind the CLI: typer options from config dataclasses.

Every simple field (int, float, str, bool, Optional of those), Literal field (validated choices) and tuple / list
field of int, float or str (a comma list, e.g. ``--horizons 1,2,4``) of a dataclass becomes one option, with the help
text taken from the dataclass docstring's ``name: text`` lines. Bad values raise ``typer.BadParameter`` (exit 2)
naming the option and the expected form.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import types
import typing
from collections.abc import Callable
from typing import Any, Optional

import typer

_SIMPLE = (int, float, str, bool)
_ITEM_NAMES = {int: "integers", float: "numbers", str: "strings"}


def fail(flag: str, message: str) -> typer.BadParameter:
    return typer.BadParameter(message, param_hint=f"'{flag}'")


@dataclasses.dataclass(frozen=True)
class Bound:
    """The valid range of a numeric option: ``lo`` / ``hi`` (None: unbounded), open (strict) or closed."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def holds(self, v: float) -> bool:
        lo_ok = self.lo is None or (v > self.lo if self.lo_open else v >= self.lo)
        hi_ok = self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)
        return lo_ok and hi_ok

    def describe(self, scalar: type) -> str:
        kind = "an integer" if scalar is int else "a number"
        if self.lo is not None and self.hi is not None:
            return (f"{kind} in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}"
                    f"{')' if self.hi_open else ']'}")
        if self.lo is not None:
            return f"{kind} {'>' if self.lo_open else '>='} {self.lo:g}"
        return f"{kind} {'<' if self.hi_open else '<='} {self.hi:g}" if self.hi is not None else kind


_POS, _NONNEG, _POSITIVE = Bound(lo=1), Bound(lo=0), Bound(lo=0, lo_open=True)
#: Ranges of the numeric config fields, by field name (the same name means the same thing in every config).
BOUNDS: dict[str, Bound] = {
    **dict.fromkeys(("batch_size", "eval_batch_size", "steps", "log_every", "eval_every", "checkpoint_every",
                     "keep_checkpoints", "dead_window", "resample_every", "n_features", "rank", "k",
                     "n_sequences", "seq_len", "positions_per_seq", "max_firings", "firings_per_passage",
                     "cap_per_atom", "batch_rows", "scan_batch", "targets_per_stratum", "n_consecutive",
                     "max_new_tokens"), _POS),
    **dict.fromkeys(("warmup_steps", "renorm_every", "k_aux", "min_position", "min_firings_per_atom", "n_bootstrap",
                     "t0", "min_t0", "end_offset", "seed", "lr_min", "lambda_aux", "lambda_sparsity",
                     "jumprelu_init_threshold"), _NONNEG),
    **dict.fromkeys(("lr", "epochs", "adam_eps", "jumprelu_bandwidth"), _POSITIVE),
    "val_fraction": Bound(lo=0, hi=1, hi_open=True),
    "batchtopk_threshold_decay": Bound(lo=0, hi=1),
}


def _convert_item(item_type: Any, text: str) -> Any:
    """One list item: int / float / str, or a fixed tuple of them written ``a:b`` (e.g. a rank bin ``10:100``)."""
    if typing.get_origin(item_type) is tuple:
        parts_types = typing.get_args(item_type)
        parts = text.split(":")
        if len(parts) != len(parts_types):
            raise ValueError(f"{text!r} is not {len(parts_types)} values joined by ':'")
        return tuple(_convert_item(t, p) for t, p in zip(parts_types, parts, strict=True))
    try:
        value = item_type(text)
    except ValueError:
        raise ValueError(f"{text!r} is not {'an integer' if item_type is int else 'a number'}") from None
    if item_type is float and not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def _example(item_type: Any, n: int | None) -> str:
    if typing.get_origin(item_type) is tuple:
        return "1:10,10:100"
    one = {int: "1", float: "0.5", str: "a"}[item_type]
    two = {int: "2", float: "3", str: "b"}[item_type]
    return ",".join([one, two] if n is None else ([one, two] * n)[:n])


def _sequence_parser(flag: str, container: type, item_type: Any, length: int | None, optional: bool,
                     form: str | None = None):
    """Parse ``"1,2,4"`` into ``container`` of ``item_type`` (``"none"`` → None when ``optional``); bad input is a
    usage error (exit 2) naming ``flag`` and the expected ``form``."""
    what = ("pairs lo:hi" if typing.get_origin(item_type) is tuple else _ITEM_NAMES[item_type])
    form = form or ((f"a comma list of {length} {what}" if length else f"a comma list of {what}")
                    + f" such as '{_example(item_type, length)}'" + (" (or 'none')" if optional else ""))

    def parse(value: Any) -> Any:
        if value is None or not isinstance(value, str):
            return value if value is None else container(value)
        text = value.strip()
        if optional and text.lower() == "none":
            return None
        items = [p.strip() for p in text.split(",")]
        if not text or any(not p for p in items):
            raise fail(flag, f"expected {form}, got {value!r}.")
        if length is not None and len(items) != length:
            raise fail(flag, f"expected {form}, got {len(items)} values in {value!r}.")
        try:
            return container(_convert_item(item_type, p) for p in items)
        except ValueError as err:
            raise fail(flag, f"expected {form}, got {value!r} ({err}).") from None

    return parse


def list_parser(flag: str, item_type: type, *, form: str | None = None) -> Callable[[Any], Any]:
    """A typer ``parser=`` for a command's own comma-list option (``--epsilons 0.1,0.3``) → list of ``item_type``."""
    return _sequence_parser(flag, list, item_type, None, False, form)


def _literal_parser(flag: str, choices: tuple[Any, ...], optional: bool):
    def parse(value: Any) -> Any:
        if value is None or value in choices:
            return value
        if optional and str(value).lower() == "none":
            return None
        allowed = ", ".join(repr(c) for c in choices)
        raise fail(flag, f"{value!r} is not one of {allowed}.")

    return parse


def _optional_parser(flag: str, scalar: type, bound: Bound | None = None, optional: bool = True):
    """An int / float / str option, range-checked against ``bound``; ``optional``: it also accepts ``none``."""
    kind = bound.describe(scalar) if bound else ("an integer" if scalar is int else "a number")
    expected = kind + (" or 'none'" if optional else "")

    def parse(value: Any) -> Any:
        if value is None:
            return value
        if isinstance(value, str):
            if optional and value.strip().lower() == "none":
                return None
            try:
                value = scalar(value)
            except ValueError:
                raise fail(flag, f"expected {expected}, got {value!r}.") from None
            if scalar is float and not math.isfinite(value):
                raise fail(flag, f"expected {expected} (finite), got {value}.")
        if bound is not None and not bound.holds(value):
            raise fail(flag, f"expected {expected}, got {value:g}.")
        return value

    return parse


@dataclasses.dataclass
class OptionSpec:
    """How one dataclass field becomes a command-line option: the typer annotation, an optional parser (lists,
    Literals, optional scalars), the default as written on the command line, and a metavar."""

    annotation: Any
    parser: Callable[[Any], Any] | None = None
    default: Any = None
    metavar: str | None = None


def _option_type(tp: Any, flag: str = "--option", default: Any = None, bound: Bound | None = None) -> OptionSpec | None:
    """The option spec of a dataclass field type, or None when the field is not a command-line option.

    int / float / str / bool: plain options; ``X | None`` of them: also accept ``none``; ``Literal[...]``: checked
    against its values; ``tuple[X, ...]`` / ``list[X]`` / ``tuple[X, X]`` of int / float / str (or of fixed tuples
    of them, written ``a:b``), optionally ``| None``: comma lists (``--horizons 1,2,4``). ``bound``: the range a
    numeric scalar must lie in."""
    if tp in (int, float) and bound is not None:
        return OptionSpec(str, _optional_parser(flag, tp, bound, optional=False), default,
                          "INTEGER" if tp is int else "FLOAT")
    if tp in _SIMPLE:
        return OptionSpec(tp, default=default)
    origin = typing.get_origin(tp)
    optional = False
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:
            return None
        tp, origin, optional = args[0], typing.get_origin(args[0]), True
        if tp in (int, float, str):
            kind = {int: "int", float: "float", str: "str"}[tp]
            parser = _optional_parser(flag, tp, bound if tp is not str else None)
            return OptionSpec(Optional[str], parser, default, f"<{kind}|none>")  # noqa: UP045
        if tp is bool:
            return None
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if not all(isinstance(c, str) for c in choices):
            return None
        return OptionSpec(Optional[str] if optional else str, _literal_parser(flag, choices, optional), default,  # noqa: UP045
                          "[" + "|".join(choices) + "]")
    if origin in (list, tuple):
        args = typing.get_args(tp)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            item, length = args[0], None
        elif origin is tuple and args and len(set(args)) == 1:
            item, length = args[0], len(args)
        elif origin is list and len(args) == 1:
            item, length = args[0], None
        else:
            return None
        simple = (int, float, str)
        ok = item in simple or (typing.get_origin(item) is tuple and all(a in simple for a in typing.get_args(item)))
        if not ok:
            return None
        parser = _sequence_parser(flag, origin, item, length, optional)
        if default is not None and default is not ...:
            default = ",".join(":".join(map(str, d)) if isinstance(d, tuple) else f"{d:g}" if isinstance(d, float)
                               else str(d) for d in default)
        kind = "lo:hi" if typing.get_origin(item) is tuple else {int: "int", float: "float", str: "str"}[item]
        metavar = f"<{kind},...{'|none' if optional else ''}>"
        return OptionSpec(Optional[str] if optional else str, parser, default, metavar)  # noqa: UP045
    return None


def field_help(cls: type) -> dict[str, str]:
    """Help text per field from the ``name: text`` lines of the dataclass docstring (its Attributes section).

    Understands continuation lines, several names sharing one text (``lr, lr_min: ...``, ``a / b: ...``) and
    several entries on one line (``seed: t0 draws. batch_rows: rows per forward.``)."""
    names = {f.name for f in dataclasses.fields(cls)}
    head = re.compile(r"^(\w+(?:\s*(?:,|/)\s*\w+)*):\s+(.*)$")
    entries: list[list[Any]] = []  # [names, text]
    current: list[Any] | None = None
    for raw in (inspect.getdoc(cls) or "").splitlines():
        line = raw.strip()
        m = head.match(line)
        keys = re.split(r"\s*(?:,|/)\s*", m.group(1)) if m else []
        if m and any(k in names for k in keys):
            current = [keys, m.group(2)]
            entries.append(current)
        elif line and current is not None:
            current[1] += " " + line
        else:
            current = None
    # a sentence starting with field names: "name: text" starts a new entry, a bare "name, name (...)" ends one
    inline = re.compile(r"(?<=\.)\s+(\w+(?:\s*(?:,|/)\s*\w+)*)(:\s+)?")
    out: dict[str, str] = {}
    for keys, text in entries:
        pieces: list[tuple[list[str], str]] = [(keys, text)]
        while True:
            k0, t0 = pieces[-1]
            hit = next((m for m in inline.finditer(t0)
                        if any(k in names for k in re.split(r"\s*(?:,|/)\s*", m.group(1)))), None)
            if hit is None:
                break
            pieces[-1] = (k0, t0[: hit.start()])
            if not hit.group(2):
                break
            pieces.append((re.split(r"\s*(?:,|/)\s*", hit.group(1)), t0[hit.end():]))
        for ks, t in pieces:
            clean = re.sub(r":\w+:`~?([^`]+)`", r"\1", t).replace("``", "").strip()
            for k in ks:
                if k in names:
                    out.setdefault(k, clean)
    return out


def config_options(cls: type, *, exclude: tuple[str, ...] = (), prefix: str = "",
                   help_overrides: dict[str, str] | None = None) -> list[inspect.Parameter]:
    """One ``typer.Option`` parameter per command-line field of dataclass ``cls`` (help text from its docstring)."""
    hints = typing.get_type_hints(cls)
    helps = {**field_help(cls), **(help_overrides or {})}
    params = []
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        name = prefix + f.name
        flag = f"--{name.replace('_', '-')}"
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            continue
        else:
            default = ...
        spec = _option_type(hints[f.name], flag, default, BOUNDS.get(f.name))
        if spec is None:
            continue
        decls = f"{flag}/--no-{name.replace('_', '-')}" if spec.annotation is bool else flag
        option = typer.Option(spec.default, decls, help=helps.get(f.name), parser=spec.parser, metavar=spec.metavar)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                        annotation=spec.annotation))
    return params


def build(cls: type, values: dict[str, Any], *, prefix: str = "", **fixed: Any) -> Any:
    """Instantiate dataclass ``cls`` from parsed options (``prefix``-ed names) plus ``fixed`` fields."""
    from writelens.errors import WriteLensError

    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k[len(prefix):]: v for k, v in values.items() if k.startswith(prefix) and k[len(prefix):] in names}
    try:
        return cls(**{**kwargs, **fixed})
    except WriteLensError as err:  # a config's own range check: name the option it came from
        m = re.search(rf"{cls.__name__}\.(\w+)", str(err))
        if m is None or m.group(1) not in kwargs:
            raise
        raise fail(f"--{(prefix + m.group(1)).replace('_', '-')}", str(err)) from None
