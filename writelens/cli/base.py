"""What every ``writelens`` command shares: the typer apps, :func:`command` (a command whose options are generated
from config dataclasses), error handling, loading a model and passages, the JSON summary. Imports nothing heavy:
each command imports torch, transformers and the experiments when it runs."""

from __future__ import annotations

import contextlib
import inspect
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, Optional  # noqa: F401  (generated command signatures are evaluated here)

import typer

from writelens.cli.options import (  # noqa: F401  (re-exported: the command modules import them from here)
    OptionSpec,
    build,
    config_options,
    fail,
    field_help,
    list_parser,
)
from writelens.errors import WriteLensError

app = typer.Typer(
    help="writelens: read and edit what recurrent language models write into their matrix state.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # plain click help: option names are never cut at 80 columns
)
zoo_app = typer.Typer(help="The shipped model zoo (offline).", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(zoo_app, name="zoo")


def command(name: str, *, configs: list[tuple[type, str, tuple[str, ...]]], base: Callable[..., Any],
            help: str, help_overrides: dict[str, str] | None = None) -> None:
    """Register ``base`` (whose own parameters come first) with the options of ``configs`` appended
    (``help_overrides``: field name → help text replacing the docstring's)."""
    own = [p for p in inspect.signature(base).parameters.values() if p.name != "options"]
    extra = [p for cls, prefix, exclude in configs
             for p in config_options(cls, exclude=exclude, prefix=prefix, help_overrides=help_overrides)]

    def runner(**kwargs: Any) -> None:
        own_kwargs = {p.name: kwargs.pop(p.name) for p in own}
        check_common_options(own_kwargs, kwargs)
        try:
            with hf_progress(kwargs.get("progress", True) is not False):
                base(**own_kwargs, options=kwargs)
        except (WriteLensError, ValueError) as err:
            typer.echo(f"error: {error_text(err)}", err=True)
            raise typer.Exit(2) from err
        except OSError as err:  # a path given on the command line that cannot be read or written
            typer.echo(f"error: {err.strerror or err}{f': {err.filename}' if err.filename else ''}; check the "
                       "paths given (--out, --data, --sae, --corpus, ...).", err=True)
            raise typer.Exit(2) from err

    runner.__signature__ = inspect.Signature(own + extra)  # type: ignore[attr-defined]
    runner.__annotations__ = {p.name: p.annotation for p in own + extra}
    runner.__doc__ = help
    app.command(name, help=help)(runner)


def error_text(err: BaseException) -> str:
    """The message of ``err`` without the quotes ``str(KeyError(...))`` adds."""
    if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
        return err.args[0]
    return str(err)


def check_common_options(own: dict[str, Any], options: dict[str, Any]) -> None:
    """Checks every command shares, made before any model is loaded: ``--out`` is a folder that can be written,
    ``--device`` a device this machine has."""
    from writelens.validate import check_device, check_out_dir

    try:
        if own.get("out") is not None:
            check_out_dir(own["out"], "--out")
    except WriteLensError as err:
        raise fail("--out", error_text(err).replace("--out=", "", 1)) from None
    if options.get("device") is not None:
        try:
            check_device(options["device"], "--device")
        except WriteLensError as err:
            raise fail("--device", error_text(err).replace("--device=", "", 1)) from None


@contextlib.contextmanager
def hf_progress(enabled: bool) -> Iterator[None]:
    """Silence transformers' progress bars (``Loading weights``) while ``enabled`` is False (``--no-progress``)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was and not enabled:
            hf_logging.enable_progress_bar()


def write_summary(out_dir: Path, summary: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "summary.json"
    path.write_text(json.dumps(summary, indent=2, default=str))
    typer.echo(json.dumps(summary, indent=2, default=str))
    return path


# ---- zoo ---------------------------------------------------------------------------------------------------------


def load_lens(model: str) -> Any:
    """A WriteLens over a zoo model name, a local folder, or a hub id."""
    import writelens as wl
    from writelens import zoo

    if model in zoo.list():
        net, tok = zoo.load(model)
        return wl.WriteLens(net, tokenizer=tok)
    if model.startswith(("/", "./", "../", "~")) or model.count("/") > 1 or "\\" in model:
        if not Path(model).expanduser().is_dir():  # a path, not a hub id: fail now rather than ask the hub
            raise fail("--model", f"{model!r} is not a folder (nor a zoo model: {', '.join(zoo.list())}).")
        model = str(Path(model).expanduser())
    from writelens.errors import ModelLoadError

    try:
        return wl.WriteLens.from_pretrained(model)
    except ModelLoadError as err:
        cause = err.__cause__ if err.__cause__ is not None else err
        first = (str(cause).strip().splitlines() or [""])[0]
        raise fail("--model", f"{model!r} is neither a zoo model ({', '.join(zoo.list())}), a local model folder nor "
                               f"a reachable hub id ({first})") from None
    except WriteLensError:
        raise
    except (OSError, ValueError) as err:
        first = (str(err).strip().splitlines() or [""])[0]
        raise fail("--model", f"{model!r} is neither a zoo model ({', '.join(zoo.list())}), a local model folder nor "
                               f"a reachable hub id ({type(err).__name__}: {first})") from None


def parse_sites(spec: str | None, flag: str = "--sites") -> list[tuple[int, int]] | list[int] | None:
    """``"9:4,9:5"`` → [(9, 4), (9, 5)]; ``"9,12"`` → [9, 12] (all heads); None/"all" → every site. Anything else
    is a usage error naming ``flag`` and the ``L:H`` form."""
    if spec is None or spec.strip().lower() == "all":
        return None
    out: list[Any] = []
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?::\s*(\d+)\s*)?", part)
        if m is None:
            raise fail(flag, f"expected sites as L:H (model layer : value head) such as '1:0,4:2', whole layers "
                             f"such as '1,4', or 'all'; got {spec!r} (the part {part.strip()!r} is not L:H or L).")
        out.append((int(m.group(1)), int(m.group(2))) if m.group(2) is not None else int(m.group(1)))
    return out


def check_sites(lens: Any, sites: list[Any] | None, flag: str = "--sites") -> None:
    """Usage error naming ``flag`` unless every site (or layer) of ``sites`` is a write site of ``lens``."""
    for s in sites or []:
        layer, head = (s, 0) if isinstance(s, int) else s
        try:
            lens.site(layer, head)
        except WriteLensError as err:
            raise fail(flag, error_text(err)) from None


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
        raise fail(flag, f"{corpus!r} is neither 'heldout', 'train-sample' nor a text file.")
    import torch

    ids = torch.tensor(tok(path.read_text(), add_special_tokens=False).input_ids)
    usable = (ids.numel() // n_tokens) * n_tokens
    if usable == 0:
        raise ValueError(f"{path} has fewer than {n_tokens} tokens.")
    if usable // n_tokens < n:
        raise ValueError(f"{path} ({ids.numel()} tokens) holds only {usable // n_tokens} passages of {n_tokens} tokens, "
                         f"fewer than the {n} asked for; ask for fewer or shorter passages, or use a longer text.")
    return ids[:usable].view(-1, n_tokens)[:n]


# ---- extract -----------------------------------------------------------------------------------------------------
