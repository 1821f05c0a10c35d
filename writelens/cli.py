"""The ``writelens`` command line, generated from the config dataclasses (typer).

Every option of ``writelens train`` is a field of :class:`~writelens.sae.SAEConfig` or
:class:`~writelens.sae.train.TrainConfig` (and likewise for the other commands), so the CLI and the Python API
cannot drift apart. Outputs are files plus a JSON summary; bad arguments exit with code 2 and a message.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Optional

import typer

from writelens.errors import WriteLensError

app = typer.Typer(
    help="writelens: read and edit what recurrent language models write into their matrix state.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # plain click help: option names are never cut at 80 columns
)
zoo_app = typer.Typer(help="The shipped model zoo (offline).", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(zoo_app, name="zoo")

_SIMPLE = (int, float, str, bool)
_ITEM_NAMES = {int: "integers", float: "numbers", str: "strings"}


def _fail(flag: str, message: str) -> typer.BadParameter:
    return typer.BadParameter(message, param_hint=f"'{flag}'")


def _convert_item(item_type: Any, text: str) -> Any:
    """One list item: int / float / str, or a fixed tuple of them written ``a:b`` (e.g. a rank bin ``10:100``)."""
    if typing.get_origin(item_type) is tuple:
        parts_types = typing.get_args(item_type)
        parts = text.split(":")
        if len(parts) != len(parts_types):
            raise ValueError(f"{text!r} is not {len(parts_types)} values joined by ':'")
        return tuple(_convert_item(t, p) for t, p in zip(parts_types, parts, strict=True))
    try:
        return item_type(text)
    except ValueError:
        raise ValueError(f"{text!r} is not {'an integer' if item_type is int else 'a number'}") from None


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
            raise _fail(flag, f"expected {form}, got {value!r}.")
        if length is not None and len(items) != length:
            raise _fail(flag, f"expected {form}, got {len(items)} values in {value!r}.")
        try:
            return container(_convert_item(item_type, p) for p in items)
        except ValueError as err:
            raise _fail(flag, f"expected {form}, got {value!r} ({err}).") from None

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
        raise _fail(flag, f"{value!r} is not one of {allowed}.")

    return parse


def _optional_parser(flag: str, scalar: type):
    """An optional int / float / str option that also accepts ``none``."""

    def parse(value: Any) -> Any:
        if value is None or not isinstance(value, str):
            return value
        if value.strip().lower() == "none":
            return None
        try:
            return scalar(value)
        except ValueError:
            kind = "an integer" if scalar is int else "a number"
            raise _fail(flag, f"expected {kind} or 'none', got {value!r}.") from None

    return parse


@dataclasses.dataclass
class OptionSpec:
    """How one dataclass field becomes a command-line option: the typer annotation, an optional parser (lists,
    Literals, optional scalars), the default as written on the command line, and a metavar."""

    annotation: Any
    parser: Callable[[Any], Any] | None = None
    default: Any = None
    metavar: str | None = None


def _option_type(tp: Any, flag: str = "--option", default: Any = None) -> OptionSpec | None:
    """The option spec of a dataclass field type, or None when the field is not a command-line option.

    int / float / str / bool: plain options; ``X | None`` of them: also accept ``none``; ``Literal[...]``: checked
    against its values; ``tuple[X, ...]`` / ``list[X]`` / ``tuple[X, X]`` of int / float / str (or of fixed tuples
    of them, written ``a:b``), optionally ``| None``: comma lists (``--horizons 1,2,4``)."""
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
            return OptionSpec(Optional[str], _optional_parser(flag, tp), default, f"<{kind}|none>")  # noqa: UP045
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
        spec = _option_type(hints[f.name], flag, default)
        if spec is None:
            continue
        decls = f"{flag}/--no-{name.replace('_', '-')}" if spec.annotation is bool else flag
        option = typer.Option(spec.default, decls, help=helps.get(f.name), parser=spec.parser, metavar=spec.metavar)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                        annotation=spec.annotation))
    return params


def build(cls: type, values: dict[str, Any], *, prefix: str = "", **fixed: Any) -> Any:
    """Instantiate dataclass ``cls`` from parsed options (``prefix``-ed names) plus ``fixed`` fields."""
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k[len(prefix):]: v for k, v in values.items() if k.startswith(prefix) and k[len(prefix):] in names}
    return cls(**{**kwargs, **fixed})


def command(name: str, *, configs: list[tuple[type, str, tuple[str, ...]]], base: Callable[..., Any],
            help: str, help_overrides: dict[str, str] | None = None) -> None:
    """Register ``base`` (whose own parameters come first) with the options of ``configs`` appended
    (``help_overrides``: field name → help text replacing the docstring's)."""
    own = [p for p in inspect.signature(base).parameters.values() if p.name != "options"]
    extra = [p for cls, prefix, exclude in configs
             for p in config_options(cls, exclude=exclude, prefix=prefix, help_overrides=help_overrides)]

    def runner(**kwargs: Any) -> None:
        own_kwargs = {p.name: kwargs.pop(p.name) for p in own}
        try:
            base(**own_kwargs, options=kwargs)
        except (WriteLensError, ValueError) as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from err

    runner.__signature__ = inspect.Signature(own + extra)  # type: ignore[attr-defined]
    runner.__annotations__ = {p.name: p.annotation for p in own + extra}
    runner.__doc__ = help
    app.command(name, help=help)(runner)


def write_summary(out_dir: Path, summary: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "summary.json"
    path.write_text(json.dumps(summary, indent=2, default=str))
    typer.echo(json.dumps(summary, indent=2, default=str))
    return path


# ---- zoo ---------------------------------------------------------------------------------------------------------


@zoo_app.command("list")
def zoo_list() -> None:
    """List the shipped models."""
    from writelens import zoo

    for name, description in zoo.list().items():
        typer.echo(f"{name}\t{description}")


@zoo_app.command("path")
def zoo_path(name: str = typer.Argument(..., help="a zoo model name (see `writelens zoo list`)")) -> None:
    """Print the folder of a shipped model (loadable with from_pretrained)."""
    from writelens import zoo

    try:
        typer.echo(str(zoo.path(name)))
    except WriteLensError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err


# ---- shared inputs ----------------------------------------------------------------------------------------------


def load_lens(model: str) -> Any:
    """A WriteLens over a zoo model name, a local folder, or a hub id."""
    import writelens as wl
    from writelens import zoo

    if model in zoo.list():
        net, tok = zoo.load(model)
        return wl.WriteLens(net, tokenizer=tok)
    if model.startswith(("/", "./", "../", "~")) or model.count("/") > 1 or "\\" in model:
        if not Path(model).expanduser().is_dir():  # a path, not a hub id: fail now rather than ask the hub
            raise _fail("--model", f"{model!r} is not a folder (nor a zoo model: {', '.join(zoo.list())}).")
        model = str(Path(model).expanduser())
    try:
        return wl.WriteLens.from_pretrained(model)
    except WriteLensError:
        raise
    except (OSError, ValueError) as err:
        first = (str(err).strip().splitlines() or [""])[0]
        raise _fail("--model", f"{model!r} is neither a zoo model ({', '.join(zoo.list())}), a local model folder nor "
                               f"a reachable hub id ({type(err).__name__}: {first})") from None


def parse_sites(spec: str | None) -> list[tuple[int, int]] | list[int] | None:
    """``"9:4,9:5"`` → [(9, 4), (9, 5)]; ``"9,12"`` → [9, 12] (all heads); None/"all" → every site."""
    if spec is None or spec == "all":
        return None
    out: list[Any] = []
    for part in spec.split(","):
        if ":" in part:
            layer, head = part.split(":")
            out.append((int(layer), int(head)))
        else:
            out.append(int(part))
    return out


def corpus_passages(lens: Any, corpus: str, n: int, n_tokens: int, seed: int, flag: str = "--corpus") -> Any:
    """Token ids [n, n_tokens] from ``corpus``: ``heldout`` / ``train-sample`` (zoo KJV text, tokenised with the
    lens's tokenizer) or a path to a UTF-8 text file (its first ``n`` windows)."""
    from writelens import zoo

    tok = lens.require_tokenizer(f"{flag} {corpus}")
    if corpus == "heldout":
        return zoo.heldout_passages(n, n_tokens, tokenizer=tok, seed=seed)
    if corpus == "train-sample":
        return zoo.train_sample_passages(n, n_tokens, tokenizer=tok, seed=seed)
    path = Path(corpus)
    if not path.is_file():
        raise _fail(flag, f"{corpus!r} is neither 'heldout', 'train-sample' nor a text file.")
    import torch

    ids = torch.tensor(tok(path.read_text(), add_special_tokens=False).input_ids)
    usable = (ids.numel() // n_tokens) * n_tokens
    if usable == 0:
        raise ValueError(f"{path} has fewer than {n_tokens} tokens.")
    return ids[:usable].view(-1, n_tokens)[:n]


# ---- extract -----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ExtractOptions:
    """Options of ``writelens extract`` (see :func:`writelens.extract`).

    Attributes:
        target: what to store: sampled_positions, final_state, all_positions or writes.
        n_sequences: how many passages of the corpus to run.
        seq_len: tokens per passage.
        positions_per_seq: states kept per passage for target sampled_positions.
        min_position: earliest position sampled.
        seed: position sampling and passage choice.
        batch_size: passages per forward.
        dtype: storage dtype: float32, bfloat16 or float16.
        overwrite: replace an existing, different extraction in the output folder.
    """

    target: Literal["sampled_positions", "final_state", "all_positions", "writes"] = "sampled_positions"
    n_sequences: int = 256
    seq_len: int = 128
    positions_per_seq: int = 8
    min_position: int = 0
    seed: int = 0
    batch_size: int = 8
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    overwrite: bool = False


def _extract(model: str = typer.Option(..., "--model", help="zoo name, local folder or hub id"),
             out: Path = typer.Option(..., "--out", help="output folder (metadata.json + shards)"),
             sites: Optional[str] = typer.Option(None, "--sites", help="'L:H,L:H', 'L,L' (all heads) or all"),  # noqa: UP045
             corpus: str = typer.Option("train-sample", "--corpus", help="heldout, train-sample or a text file"),
             options: dict[str, Any] | None = None) -> None:
    import writelens as wl

    opts = build(ExtractOptions, options or {})
    lens = load_lens(model)
    ids = corpus_passages(lens, corpus, opts.n_sequences, opts.seq_len, opts.seed)
    result = wl.extract(lens, ids, parse_sites(sites), opts.target, out_dir=out, positions_per_seq=opts.positions_per_seq,
                        seed=opts.seed, batch_size=opts.batch_size, min_position=opts.min_position, dtype=opts.dtype,
                        overwrite=opts.overwrite)
    write_summary(out, {"command": "extract", "model": model, "corpus": corpus, **dataclasses.asdict(opts),
                        "n_shards": result.n_shards, "written": len(result.written), "skipped": len(result.skipped)})


# ---- train -------------------------------------------------------------------------------------------------------


def _train(data: Path = typer.Option(..., "--data", help="extraction folder (metadata.json + shards)"),
           layer: int = typer.Option(..., "--layer", help="model layer index of the site"),
           head: int = typer.Option(..., "--head", help="value head of the site"),
           out: Path = typer.Option(..., "--out", help="output folder (checkpoints, train_log.jsonl, SAE)"),
           options: dict[str, Any] | None = None) -> None:
    from writelens.sae import SAEConfig, StateDataset, build_sae
    from writelens.sae.train import TrainConfig, train_sae

    options = options or {}
    if not (data / "metadata.json").exists():
        raise ValueError(f"{data} holds no metadata.json; point --data at a `writelens extract` output folder.")
    dataset = StateDataset.from_shards(data, layer, head)
    train_cfg = build(TrainConfig, options, prefix="")
    d_k, d_v = dataset.state_shape[-2:]
    sae_cfg = build(SAEConfig, options, prefix="", d_k=d_k, d_v=d_v,
                    metadata={"data": str(data), "layer": layer, "head": head})
    sae = build_sae(sae_cfg, seed=train_cfg.seed)
    result = train_sae(sae, dataset, train_cfg, out_dir=out)
    sae.save(out / "sae")
    metrics = lambda m: dataclasses.asdict(m) if dataclasses.is_dataclass(m) else m  # noqa: E731
    write_summary(out, {"command": "train", "sae": str(out / "sae"), "site": [layer, head], "steps": result.steps,
                        "final_val": metrics(result.final_val), "best_val": metrics(result.best_val)})


def _register() -> None:
    from writelens.sae import SAEConfig
    from writelens.sae.train import TrainConfig

    command("extract", configs=[(ExtractOptions, "", ())], base=_extract,
            help="Extract states (or writes) of write sites from a model over a corpus, resumably.")
    command("train", configs=[(SAEConfig, "", ("d_k", "d_v", "n_heads")), (TrainConfig, "", ())], base=_train,
            help="Train an SAE on states extracted for one (layer, head).",
            help_overrides={"keep_checkpoints": "this many most recent checkpoints are kept.",
                            "eval_batch_size": "states per validation batch.",
                            "device": "training device (cpu, cuda, cuda:1, ...).",
                            "wandb_project": "log to this wandb project when wandb is installed (none: no logging).",
                            "progress": "tqdm progress bar."})
    from writelens import cli_experiments

    cli_experiments.register()


def main() -> None:  # pragma: no cover - entry point
    app(prog_name="writelens")


if __name__ == "__main__":  # pragma: no cover - `python -m writelens.cli`: run the importable module's app
    from writelens.cli import main as _main  # (it registers every command; cli_experiments imports from it)

    sys.exit(_main())
else:
    _register()
