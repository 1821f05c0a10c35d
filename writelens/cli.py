"""The ``writelens`` command line, generated from the config dataclasses (typer).

Every option of ``writelens train`` is a field of :class:`~writelens.sae.SAEConfig` or
:class:`~writelens.sae.train.TrainConfig` (and likewise for the other commands), so the CLI and the Python API
cannot drift apart. Outputs are files plus a JSON summary; bad arguments exit with code 2 and a message.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, Optional

import typer

from writelens.cli_options import (  # noqa: F401  (re-exported: cli_experiments and users import them from here)
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
        typer.echo(f"error: {error_text(err)}", err=True)
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
        progress: progress bars on stderr.
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
    progress: bool = True


def _extract(model: str = typer.Option(..., "--model", help="zoo name, local folder or hub id"),
             out: Path = typer.Option(..., "--out", help="output folder (metadata.json + shards)"),
             sites: Optional[str] = typer.Option(None, "--sites", help="'L:H,L:H', 'L,L' (all heads) or all"),  # noqa: UP045
             corpus: str = typer.Option("train-sample", "--corpus", help="heldout, train-sample or a text file"),
             options: dict[str, Any] | None = None) -> None:
    import writelens as wl

    opts = build(ExtractOptions, options or {})
    site_list = parse_sites(sites)
    lens = load_lens(model)
    check_sites(lens, site_list)
    ids = corpus_passages(lens, corpus, opts.n_sequences, opts.seq_len, opts.seed)
    result = wl.extract(lens, ids, site_list, opts.target, out_dir=out, positions_per_seq=opts.positions_per_seq,
                        seed=opts.seed, batch_size=opts.batch_size, min_position=opts.min_position, dtype=opts.dtype,
                        overwrite=opts.overwrite, progress=opts.progress)
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
