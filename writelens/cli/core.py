"""The model-zoo, ``extract`` and ``train`` commands of the ``writelens`` CLI.

Every option of ``writelens train`` is a field of :class:`~writelens.sae.SAEConfig` or
:class:`~writelens.sae.train.TrainConfig` (and ``extract``'s of :class:`ExtractOptions`), so the CLI and the Python
API cannot drift apart. Outputs are files plus a JSON summary; bad arguments exit with code 2 and a message.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal, Optional

import typer

from writelens.cli.base import (
    build,
    check_sites,
    command,
    corpus_passages,
    error_text,
    load_lens,
    parse_sites,
    write_summary,
    zoo_app,
)
from writelens.errors import WriteLensError


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


def register() -> None:
    """Add ``extract`` and ``train`` to :data:`writelens.cli.app` (``zoo list`` / ``zoo path`` register on import)."""
    from writelens.sae.config import SAEConfig
    from writelens.sae.train_config import TrainConfig

    command("extract", configs=[(ExtractOptions, "", ())], base=_extract,
            help="Extract states (or writes) of write sites from a model over a corpus, resumably.")
    command("train", configs=[(SAEConfig, "", ("d_k", "d_v", "n_heads")), (TrainConfig, "", ())], base=_train,
            help="Train an SAE on states extracted for one (layer, head).",
            help_overrides={"keep_checkpoints": "this many most recent checkpoints are kept.",
                            "eval_batch_size": "states per validation batch.",
                            "device": "training device (cpu, cuda, cuda:1, ...).",
                            "wandb_project": "log to this wandb project when wandb is installed (none: no logging).",
                            "progress": "tqdm progress bar."})
