"""The ``writelens`` command line, generated from the config dataclasses (typer).

Every option of ``writelens train`` is a field of :class:`~writelens.sae.SAEConfig` or
:class:`~writelens.sae.train.TrainConfig` (and likewise for the other commands), so the CLI and the Python API
cannot drift apart. Outputs are files plus a JSON summary; bad arguments exit with code 2 and a message.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import sys
from collections.abc import Callable
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
            raise fail("--model", f"{model!r} is not a folder (nor a zoo model: {', '.join(zoo.list())}).")
        model = str(Path(model).expanduser())
    try:
        return wl.WriteLens.from_pretrained(model)
    except WriteLensError:
        raise
    except (OSError, ValueError) as err:
        first = (str(err).strip().splitlines() or [""])[0]
        raise fail("--model", f"{model!r} is neither a zoo model ({', '.join(zoo.list())}), a local model folder nor "
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
