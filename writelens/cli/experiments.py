"""The experiment commands of the ``writelens`` CLI: ``replace-test``, ``attribute`` and ``steer``.

Registered by :mod:`writelens.cli` (the entry point is ``writelens.cli:app``). As for ``extract`` and ``train``,
every experiment option is generated from a field of the experiment's options dataclass
(:class:`~writelens.experiments.replacement.ReplacementOptions`,
:class:`~writelens.experiments.logit_attribution.AttributionOptions`,
:class:`~writelens.experiments.install.InstallOptions`); the commands' own options pick the model, the SAE, the
site and the passages. Each command writes ``result.json`` (the full result, ``Result.from_json`` reads it back),
an HTML figure page and ``summary.json`` (also printed). Bad arguments exit with code 2 and a message.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Optional

import typer

from writelens.cli.base import build, command, corpus_passages, fail, list_parser, load_lens, write_summary
from writelens.errors import WriteLensError

__all__ = ["register", "parse_site", "resolve_site", "load_site_sae", "check_sae", "top_atoms", "target_ids"]

_SEED_NOTE = " Also picks the corpus passages."


def _note(enabled: bool, message: str) -> None:
    if enabled:
        typer.echo(message, err=True)


# ---- shared inputs ----------------------------------------------------------------------------------------------


def parse_site(spec: str, flag: str = "--site") -> tuple[int, int]:
    """``"1:0"`` → (1, 0); anything else is a usage error naming ``flag``."""
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", spec)
    if m is None:
        raise fail(flag, f"expected LAYER:HEAD such as '1:0' (model layer index : value head), got {spec!r}.")
    return int(m.group(1)), int(m.group(2))


def resolve_site(lens: Any, spec: str | None, sae: Any = None, flag: str = "--site") -> Any:
    """The lens's ``Site`` named by ``spec`` (``L:H``), or by the SAE's recorded layer / head when ``spec`` is None."""
    if spec is None:
        meta = getattr(getattr(sae, "cfg", None), "metadata", None) or {}
        try:
            layer, head = int(meta["layer"]), int(meta["head"])
        except (KeyError, TypeError, ValueError):
            raise fail(flag, "give the site as LAYER:HEAD (the SAE records no layer / head).") from None
    else:
        layer, head = parse_site(spec, flag)
    try:
        return lens.site(layer, head)
    except WriteLensError as err:
        raise fail(flag, str(err)) from None


def load_site_sae(path: Path, site: Any = None, flag: str = "--sae") -> Any:
    """Load the SAE folder ``path`` (``wl.load_sae``); with ``site``, check that it encodes that site's states."""
    import writelens as wl

    try:
        sae = wl.load_sae(path)
    except WriteLensError as err:
        raise fail(flag, str(err)) from None
    if site is not None:
        check_sae(sae, site, path, flag)
    return sae


def check_sae(sae: Any, site: Any, path: Path, flag: str = "--sae") -> None:
    """Usage error unless ``sae`` encodes states of ``site`` (shape, and the head for a stacked SAE)."""
    from writelens.experiments.common import single_head_sae

    cfg = sae.cfg
    name = f"L{site.layer}H{site.head}"
    if (cfg.d_k, cfg.d_v) != (site.d_k, site.d_v):
        raise fail(flag, f"{path} encodes {cfg.d_k}x{cfg.d_v} states, but site {name} of this model holds "
                         f"{site.d_k}x{site.d_v} states; pass an SAE trained on this model's site (writelens train "
                         f"--layer {site.layer} --head {site.head}).")
    try:
        single_head_sae(sae, site.head)
    except WriteLensError as err:
        raise fail(flag, str(err)) from None
    meta = cfg.metadata or {}
    if not getattr(sae, "stacked", False) and "layer" in meta and "head" in meta:
        if (str(meta["layer"]), str(meta["head"])) != (str(site.layer), str(site.head)):
            typer.echo(f"warning: {path} was trained on L{meta['layer']}H{meta['head']}, used here at {name}.",
                       err=True)


def top_atoms(lens: Any, sae: Any, site: Any, ids: Any, n: int, *, min_position: int = 0, batch_size: int = 8,
              show: bool = True) -> list[int]:
    """The ``n`` features active at the most (passage, position) pairs of ``ids`` (ties: lower id first)."""
    import torch

    from writelens.experiments.common import scan_site

    scan = scan_site(lens, sae, (site.layer, site.head), ids, min_position=min_position, batch_size=batch_size,
                     keep_logits=False, desc="top atoms: scan", show=show)
    active = scan.values > 0
    counts = torch.bincount(scan.indices[active].flatten(), minlength=sae.cfg.n_features)
    order = sorted(range(counts.numel()), key=lambda i: (-int(counts[i]), i))
    return [i for i in order[:n] if counts[i] > 0]


def _parse_atoms(value: Any) -> Any:
    """``--atoms``: ``top:N`` → ("top", N); ``"3,17"`` → [3, 17]."""
    if not isinstance(value, str):
        return value
    m = re.fullmatch(r"\s*top\s*:\s*(\d+)\s*", value)
    if m:
        if int(m.group(1)) < 1:
            raise fail("--atoms", "top:N needs N >= 1.")
        return ("top", int(m.group(1)))
    return list_parser("--atoms", int, form="a comma list of feature ids such as '3,17' or top:N such as 'top:8'")(
        value)


def _outputs(out: Path, result: Any, sections: list[Any], figure_name: str, title: str,
             headlines: list[Any] = ()) -> list[str]:
    """Write result.json and the report page (sections with their text); the names of the files written."""
    from writelens import report

    out.mkdir(parents=True, exist_ok=True)
    result.to_json(out / "result.json")
    files = ["result.json"]
    if sections:
        report.save_report(sections, out / figure_name, title=title, headlines=headlines)
        files.append(figure_name)
    return files + ["summary.json"]


def _summary(out: Path, head: dict[str, Any], result: Any, files: list[str], started: float) -> None:
    from writelens.experiments.base import to_jsonable

    write_summary(out, to_jsonable({**head, **result.summary(), "elapsed_s": round(time.perf_counter() - started, 2),
                                    "out": str(out), "files": files}))


# ---- replace-test -----------------------------------------------------------------------------------------------


def _replace_test(
    model: str = typer.Option(..., "--model", help="zoo name (gdn-tiny, mamba2-tiny, rwkv7-tiny), local model folder or hub id"),
    sae: Path = typer.Option(..., "--sae", help="SAE folder (sae.save(); `writelens train` writes <out>/sae)"),
    out: Path = typer.Option(..., "--out", help="output folder (result.json, kl_scatter.html, summary.json)"),
    site: Optional[str] = typer.Option(None, "--site", metavar="<layer:head>",  # noqa: UP045
                                       help="the site LAYER:HEAD, e.g. 1:0 (default: the layer / head the SAE "
                                            "records)"),
    corpus: str = typer.Option("heldout", "--corpus", help="passages from: heldout, train-sample or a text file"),
    n_passages: int = typer.Option(32, "--n-passages", min=1, help="passages to run"),
    passage_len: int = typer.Option(128, "--passage-len", min=2, help="tokens per passage"),
    flat_sae: Optional[Path] = typer.Option(None, "--flat-sae",  # noqa: UP045
                                            help="a flat SAE folder of the same site: adds the flat_svd baseline "
                                                 "(sets --baseline flat_svd)"),
    options: dict[str, Any] | None = None,
) -> None:
    from writelens import report
    from writelens.experiments.replacement import ReplacementOptions, replacement_test

    started = time.perf_counter()
    opts = build(ReplacementOptions, options or {})
    if flat_sae is not None:
        opts.baseline = "flat_svd"
    elif opts.baseline == "flat_svd":
        raise fail("--baseline", "flat_svd needs --flat-sae FOLDER (a flat SAE trained on the same site).")
    _note(opts.progress, f"replace-test: loading {model}")
    lens = load_lens(model)
    the_sae = load_site_sae(sae)
    the_site = resolve_site(lens, site, the_sae)
    check_sae(the_sae, the_site, sae)
    flat = load_site_sae(flat_sae, the_site, "--flat-sae") if flat_sae is not None else None
    ids = corpus_passages(lens, corpus, n_passages, passage_len, opts.seed)
    _note(opts.progress, f"replace-test: {ids.shape[0]} passages x {ids.shape[1]} tokens at "
                         f"L{the_site.layer}H{the_site.head}")
    result = replacement_test(lens, the_sae, (the_site.layer, the_site.head), ids, opts, flat_sae=flat)
    sections: list[Any] = []
    headlines: list[Any] = []
    if result.stats.n_firings:
        headlines = [report.replacement_headline("replacement win rate", result, "atom beats delete")]
        sections = [report.scatter_section(result, "delete"), report.scatter_section(result, "random")]
        if result.kl_flat_svd:
            sections.append(report.scatter_section(result, "flat_svd"))
        sections += [report.ratio_section(result), report.floor_section(result)]
        if result.floor is not None and result.floor.warning:
            typer.echo(f"warning: {result.floor.warning}", err=True)
    else:
        typer.echo("warning: no firings (no feature of the SAE is active at the chosen positions); no figure.",
                   err=True)
    files = _outputs(out, result, sections, "kl_scatter.html",
                     f"replacement test L{the_site.layer}H{the_site.head} ({model})", headlines)
    _summary(out, {"command": "replace-test", "model": model, "sae": str(sae), "flat_sae": flat_sae and str(flat_sae),
                   "corpus": corpus, "passages": list(ids.shape)}, result, files, started)


# ---- attribute --------------------------------------------------------------------------------------------------


def _attribute(
    model: str = typer.Option(..., "--model", help="zoo name (gdn-tiny, mamba2-tiny, rwkv7-tiny), local model folder or hub id"),
    sae: Path = typer.Option(..., "--sae", help="SAE folder (sae.save(); `writelens train` writes <out>/sae)"),
    out: Path = typer.Option(..., "--out", help="output folder (result.json, attribution_scatter.html, summary.json)"),
    site: Optional[str] = typer.Option(None, "--site", metavar="<layer:head>",  # noqa: UP045
                                       help="the site LAYER:HEAD, e.g. 1:0 (default: the layer / head the SAE "
                                            "records)"),
    atoms: str = typer.Option("top:8", "--atoms", parser=_parse_atoms, metavar="<top:N|id,...>",
                              help="feature ids (3,17) or top:N, the N features active at the most positions of "
                                   "the passages"),
    epsilons: str = typer.Option("0.03,0.1,0.3", "--epsilons", metavar="<float,...>",
                                 parser=list_parser("--epsilons", float),
                                 help="perturbation sizes ε (‖ΔS‖_F, or × the native write norm with "
                                      "--epsilon-mode write_norm); negative values allowed"),
    corpus: str = typer.Option("heldout", "--corpus", help="passages from: heldout, train-sample or a text file"),
    n_passages: int = typer.Option(16, "--n-passages", min=1, help="passages (one edit position t0 each)"),
    passage_len: int = typer.Option(64, "--passage-len", min=2,
                                    help="tokens per passage (at least min_t0 + max(horizons) + 1)"),
    options: dict[str, Any] | None = None,
) -> None:
    from writelens import report
    from writelens.experiments.logit_attribution import AttributionOptions, attribution

    started = time.perf_counter()
    opts = build(AttributionOptions, options or {})
    if any(h < 0 for h in opts.horizons):
        raise fail("--horizons", f"horizons must be >= 0, got {list(opts.horizons)}.")
    if any(r < 1 for r in opts.target_ranks):
        raise fail("--target-ranks", f"ranks start at 1 (the top prediction), got {list(opts.target_ranks)}.")
    need = (opts.t0 if opts.t0 is not None else opts.min_t0) + max(opts.horizons) + 1
    if passage_len < need:
        raise fail("--passage-len", f"{passage_len} tokens cannot hold t0 >= {need - max(opts.horizons) - 1} plus "
                                    f"horizon {max(opts.horizons)}; use --passage-len {need} or more (or smaller "
                                    "--horizons / --min-t0).")
    _note(opts.progress, f"attribute: loading {model}")
    lens = load_lens(model)
    the_sae = load_site_sae(sae)
    the_site = resolve_site(lens, site, the_sae)
    check_sae(the_sae, the_site, sae)
    ids = corpus_passages(lens, corpus, n_passages, passage_len, opts.seed)
    n_features = the_sae.cfg.n_features
    if isinstance(atoms, tuple):
        from writelens.experiments.common import single_head_sae

        chosen = top_atoms(lens, single_head_sae(the_sae, the_site.head), the_site, ids, atoms[1],
                           min_position=opts.min_t0, batch_size=opts.scan_batch, show=opts.progress)
        if not chosen:
            raise fail("--atoms", "no feature of the SAE is active on these passages; pass feature ids instead.")
    else:
        chosen = list(atoms)
        wrong = [a for a in chosen if not 0 <= a < n_features]
        if wrong:
            raise fail("--atoms", f"feature ids must be in [0, {n_features}), got {wrong}.")
    _note(opts.progress, f"attribute: atoms {chosen}, ε {list(epsilons)}, {ids.shape[0]} passages x "
                         f"{ids.shape[1]} tokens at L{the_site.layer}H{the_site.head}")
    result = attribution(lens, the_sae, (the_site.layer, the_site.head), ids, chosen, list(epsilons), opts)
    predictors = ("exact", "linearised", "three_factor")
    files = _outputs(out, result, [report.attribution_section(result, p) for p in predictors],
                     "attribution_scatter.html", f"logit attribution L{the_site.layer}H{the_site.head} ({model})",
                     [report.attribution_headline(result, p) for p in predictors])
    _summary(out, {"command": "attribute", "model": model, "sae": str(sae), "corpus": corpus,
                   "passages": list(ids.shape), "atoms": chosen, "epsilons": list(epsilons)}, result, files, started)


# ---- steer ------------------------------------------------------------------------------------------------------


def target_ids(lens: Any, items: list[str], flag: str = "--targets") -> list[int]:
    """Token ids of ``items``: integers are ids; words must be one token (tried with a leading space first)."""
    vocab = lens.model.get_output_embeddings().weight.shape[0]
    out = []
    for item in items:
        if re.fullmatch(r"\d+", item):
            tok = int(item)
        else:
            tokenizer = lens.require_tokenizer(f"{flag} {item!r}")
            options = [tokenizer(text, add_special_tokens=False).input_ids for text in (" " + item, item)]
            single = [ids for ids in options if len(ids) == 1]
            if not single:
                raise fail(flag, f"{item!r} is {len(options[1])} tokens {options[1]} for this tokenizer; give "
                                 "single-token words or token ids.")
            tok = int(single[0][0])
            unk = getattr(tokenizer, "unk_token_id", None)
            if unk is not None and tok == unk and item != getattr(tokenizer, "unk_token", None):
                raise fail(flag, f"{item!r} is not in the tokenizer's vocabulary (it maps to the unknown token "
                                 f"{tokenizer.unk_token!r}); give words the tokenizer knows, or token ids.")
        if not 0 <= tok < vocab:
            raise fail(flag, f"token id {tok} is outside the vocabulary (0..{vocab - 1}).")
        out.append(tok)
    return out


def _steer(
    model: str = typer.Option(..., "--model", help="zoo name (gdn-tiny, mamba2-tiny, rwkv7-tiny), local model folder or hub id"),
    site: str = typer.Option(..., "--site", metavar="<layer:head>", help="the site LAYER:HEAD to install at, e.g. 1:0"),
    out: Path = typer.Option(..., "--out", help="output folder (result.json, install.html, summary.json)"),
    prompts_from: str = typer.Option("heldout", "--prompts-from",
                                     help="prompts from: heldout, train-sample or a text file"),
    n_prompts: int = typer.Option(8, "--n-prompts", min=1, help="prompts"),
    prompt_len: int = typer.Option(32, "--prompt-len", min=1, help="tokens per prompt"),
    targets: Optional[str] = typer.Option(None, "--targets", metavar="<tok,...>",  # noqa: UP045
                                          parser=list_parser("--targets", str, form="a comma list of token ids or "
                                                             "single-token words such as 'Lord,God' or '611,378'"),
                                          help="explicit targets for every prompt (token ids or single-token "
                                               "words); default: drawn per prompt from --strata"),
    options: dict[str, Any] | None = None,
) -> None:
    from writelens import report
    from writelens.experiments.install import InstallOptions, install_steering

    started = time.perf_counter()
    opts = build(InstallOptions, options or {})
    if any(lo < 1 or hi <= lo for lo, hi in opts.strata):
        raise fail("--strata", f"each rank bin lo:hi needs 1 <= lo < hi, got {list(opts.strata)}.")
    if opts.key_side == "next_query" and opts.end_offset < 1:
        raise fail("--key-side", "next_query needs --end-offset 1 or more (the query after the last install "
                                 "position must be in the prompt).")
    _note(opts.progress, f"steer: loading {model}")
    lens = load_lens(model)
    the_site = resolve_site(lens, site)
    ids = corpus_passages(lens, prompts_from, n_prompts, prompt_len, opts.seed, flag="--prompts-from")
    given = target_ids(lens, list(targets)) if targets is not None else None
    _note(opts.progress, f"steer: {ids.shape[0]} prompts x {ids.shape[1]} tokens at L{the_site.layer}H{the_site.head}"
                         f", magnitudes {list(opts.magnitudes)}")
    result = install_steering(lens, (the_site.layer, the_site.head), ids, targets=given, options=opts)
    sections: list[Any] = []
    if result.cells:
        sections = [report.install_section(result, m) for m in opts.magnitudes]
        if len(opts.magnitudes) > 1:
            sections.append(report.dose_section(result))
    headlines = [h for c in dict.fromkeys((c.stratum, c.magnitude) for c in result.cells)
                 if (h := report.install_headline(result, *c)) is not None]
    files = _outputs(out, result, sections, "install.html",
                     f"install steering L{the_site.layer}H{the_site.head} ({model})", headlines)
    _summary(out, {"command": "steer", "model": model, "prompts_from": prompts_from, "prompts": list(ids.shape),
                   "targets": given}, result, files, started)


# ---- registration -----------------------------------------------------------------------------------------------


def register() -> None:
    """Add ``replace-test``, ``attribute`` and ``steer`` to :data:`writelens.cli.app`."""
    from writelens.experiments.options import AttributionOptions, InstallOptions, ReplacementOptions

    command("replace-test", configs=[(ReplacementOptions, "", ())], base=_replace_test,
            help_overrides={"seed": "firing choice, random atoms, bootstrap." + _SEED_NOTE,
                            "progress": "progress bars and stage messages on stderr.",
                            "baseline": "none or flat_svd (needs --flat-sae; giving --flat-sae selects it)."},
            help="Replacement test at one site: per firing, KL of the edited vs native prediction when the write is "
                 "replaced by the SAE atom, deleted, or replaced by a random rank-1 matrix. Writes result.json, "
                 "kl_scatter.html, summary.json.")
    command("attribute", configs=[(AttributionOptions, "", ())], base=_attribute,
            help_overrides={"seed": "t0 draws." + _SEED_NOTE,
                            "progress": "progress bars and stage messages on stderr."},
            help="Logit attribution of atoms added to the state: predicted (exact in-layer, linearised, "
                 "three-factor) vs measured logit changes, with R². Writes result.json, attribution_scatter.html, "
                 "summary.json.")
    command("steer", configs=[(InstallOptions, "", ())], base=_steer,
            help_overrides={"seed": "target draws." + _SEED_NOTE,
                            "progress": "progress bars and stage messages on stderr.",
                            "strata": "rank bins lo:hi ([lo, hi)) of the target in the unedited first-step "
                                      "distribution (rank 1 = argmax); targets are drawn per prompt from each."},
            help="Install steering at one site: write W_O^hᵀ W_U[target] into the state at the prompt's last "
                 "positions, greedy-decode, and compare target inclusion with the unedited model. Writes "
                 "result.json, install.html, summary.json.")
