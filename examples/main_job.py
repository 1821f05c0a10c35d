"""The method's main job on a zoo model: extract → train a WriteSAE → replacement test → attribution → install →
figures (HTML) and ``summary.json``.

    python examples/main_job.py                     # gdn-tiny (≤ 10 min on 2 CPU cores)
    python examples/main_job.py --model mamba2-tiny # the same on the Mamba-2 zoo model (site L4 H0)
    python examples/main_job.py --model rwkv7-tiny  # the same on the RWKV-7 zoo model (needs rwkv7-hf; rank-2 SAE)
    python examples/main_job.py --random            # no zoo model: a random-init model of the same shape (smoke run)
    python examples/main_job.py --random --quick    # a tiny model and tiny budget (seconds; used by the tests)
    python examples/main_job.py --model gdn-mqar    # an associative-recall organism: the known-answer table
                                                    # (also mamba2-mqar, rwkv7-mqar; docs "Known answers")

Outputs in ``--out`` (default ``runs/main_job``): ``summary.json`` (headline numbers, options, seeds, step times),
one JSON per experiment, ``report.html`` (every figure, standalone), ``figures/*.html`` and the trained SAE
(``sae/final``); the extracted states and training checkpoints are removed at the end unless ``--keep-states``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import writelens as wl
from writelens import plot, report
from writelens.experiments import (
    AttributionOptions,
    InstallOptions,
    ReplacementOptions,
    attribution,
    feature_card,
    install_steering,
    replacement_test,
)
from writelens.experiments.base import to_jsonable
from writelens.experiments.common import scan_site
from writelens.sae import BilinearSAE
from writelens.sae.data import StateDataset
from writelens.sae.train import TrainConfig, train_sae
from writelens.zoo.gates import spread_gates


@dataclass
class MainJobConfig:
    """Budget and choices of the main job (defaults: ≤ 10 minutes on 2 CPU cores for gdn-tiny)."""

    layer: int = 4
    head: int = 1
    n_train_seqs: int = 256
    train_seq_len: int = 256
    positions_per_seq: int = 16
    n_features: int = 512
    k: int = 16
    train_steps: int = 1000
    batch_size: int = 256
    n_eval: int = 48
    eval_len: int = 128
    max_firings: int = 600
    population_cap: int = 30  # population mode: firings per atom (atoms with ≥ 5 kept)
    n_attr_passages: int = 16
    n_attr_atoms: int = 8
    epsilons: tuple[float, ...] = (0.01, 0.1, 0.3, 1.0, 3.0)  # × the native write norm at t0
    n_prompts: int = 16
    prompt_len: int = 48
    magnitudes: tuple[float, ...] = (1.5, 3.0, 6.0)
    seed: int = 2026


QUICK = dict(layer=1, head=0, n_train_seqs=32, train_seq_len=48, positions_per_seq=8, n_features=64, k=4,
             train_steps=60, batch_size=64, n_eval=6, eval_len=32, max_firings=40, population_cap=3, n_attr_passages=3, n_attr_atoms=3, n_prompts=3,
             prompt_len=16, magnitudes=(3.0,))


#: the default site per zoo model: a mid-depth recurrent layer, a head with long memory (mean decay near 1)
SITES = {"gdn-tiny": (4, 1), "mamba2-tiny": (4, 0), "rwkv7-tiny": (4, 0)}  # rwkv7: mean decay of L4 heads 0.997, 0.994, 0.973, 0.868

#: rank of the WriteSAE's atoms per model (default 1). RWKV-7's transition is diagonal plus rank 1, so its writes
#: are read back through a rank-1 erase; the method uses rank-2 atoms there.
SAE_RANK = {"rwkv7-tiny": 2}


ORGANISMS = ("gdn-mqar", "mamba2-mqar", "rwkv7-mqar")


def organism_job(args) -> dict:
    """The known-answer experiments on an associative-recall organism: each figure beside the value it must reach
    (mechanism map by deletion, transplant of the model's own write, slot erasure with random controls)."""
    from writelens.experiments.known_answers import KnownAnswersOptions, known_answers

    torch.set_num_threads(args.threads or 1)
    out = Path(args.out or f"runs/main_job_{args.model}")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model, _ = wl.zoo.load(args.model)
    lens = wl.WriteLens(model)
    opts = KnownAnswersOptions(n_passages=16 if args.quick else 64, progress=not args.no_progress,
                               sae_steps=None if args.no_sae else (100 if args.quick else 1500),
                               sae_recovery_passages=64 if args.quick else 512)
    res = known_answers(lens, wl.zoo.task(args.model), opts)
    res.to_json(out / "known_answers.json")
    summary = {"model": args.model, "known_answers": res.summary(), "passes": res.passes,
               "seconds": round(time.perf_counter() - started, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    missed = [r for r in res.rows if not r.passes]
    print(f"{args.model}: known answers ({summary['seconds']} s)\n{res.table()}\n"
          + ("all figures reach their bars" if not missed else f"{len(missed)} of {len(res.rows)} figures miss their "
             f"bars ({', '.join(sorted({r.experiment for r in missed}))}; why: docs 'Known answers')")
          + f"\nwritten: {out / 'summary.json'}, {out / 'known_answers.json'}")
    return summary


def load_model(name: str, random: bool, quick: bool):
    """(lens, train token ids fn, held-out token ids fn, description)."""
    if not random:
        try:
            model, tok = wl.zoo.load(name)
        except (FileNotFoundError, wl.errors.ZooModelNotFoundError) as exc:
            sys.exit(f"The zoo model {name} is not installed ({exc}).\n"
                     "Run `python examples/main_job.py --random` for a smoke run on a random-init model of the "
                     f"same shape, or build the model with `python -m writelens.zoo.train {name}`.")
        lens = wl.WriteLens(model, tokenizer=tok)
        return (lens, lambda n, t: wl.zoo.train_sample_passages(n, t), lambda n, t: wl.zoo.heldout_passages(n, t),
                f"zoo {name} (KJV); SAE trained on train-sample passages, experiments on held-out books")
    if name == "mamba2-tiny":
        return random_mamba2(quick)
    if name == "rwkv7-tiny":
        return random_rwkv7(quick)
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

    from writelens.zoo.registry import gdn_tiny_config

    if quick:
        cfg = Qwen3_5TextConfig(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                                num_attention_heads=2, num_key_value_heads=1, head_dim=16, linear_num_key_heads=1,
                                linear_num_value_heads=2, linear_key_head_dim=16, linear_value_head_dim=16,
                                linear_conv_kernel_dim=4, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    else:
        cfg = gdn_tiny_config()
    torch.manual_seed(0)
    model = Qwen3_5ForCausalLM(cfg).eval()
    spread_gates(model)  # random init forgets within a token or two
    vocab = cfg.vocab_size

    def tokens(seed):
        return lambda n, t: torch.randint(3, vocab, (n, t), generator=torch.Generator().manual_seed(seed))

    return wl.WriteLens(model), tokens(0), tokens(1), "random-init Qwen3.5 on random tokens (smoke run: no meaning)"


def _random_tokens(vocab: int, seed: int):
    return lambda n, t: torch.randint(3, vocab, (n, t), generator=torch.Generator().manual_seed(seed))


def random_mamba2(quick: bool):
    """A random-init Mamba2ForCausalLM (the zoo shape, or a tiny one with ``quick``), gates spread."""
    from transformers import Mamba2Config, Mamba2ForCausalLM

    from writelens.zoo.registry import mamba2_tiny_config

    cfg = (Mamba2Config(vocab_size=256, hidden_size=64, num_hidden_layers=2, state_size=16, expand=2, head_dim=16,
                        num_heads=8, n_groups=1, conv_kernel=4, chunk_size=16) if quick else mamba2_tiny_config())
    torch.manual_seed(0)
    model = spread_gates(Mamba2ForCausalLM(cfg).eval())
    return (wl.WriteLens(model), _random_tokens(cfg.vocab_size, 0), _random_tokens(cfg.vocab_size, 1),
            "random-init Mamba-2 on random tokens (smoke run: no meaning)")


def random_rwkv7(quick: bool):
    """A random-init rwkv7_hf RWKV7ForCausalLM (the zoo shape, or a tiny one with ``quick``). Random init leaves
    k_k = k_a = 0 (no erase term) and tiny mixes; spread them (writelens.zoo.gates)."""
    from rwkv7_hf.configuration_rwkv7 import RWKV7Config
    from rwkv7_hf.modeling_rwkv7 import RWKV7ForCausalLM

    from writelens.zoo.registry import rwkv7_tiny_config

    cfg = (RWKV7Config(vocab_size=256, hidden_size=64, num_hidden_layers=2, head_dim=16, intermediate_size=128,
                       decay_low_rank_dim=8, gate_low_rank_dim=8, a_low_rank_dim=8, v_low_rank_dim=8,
                       initializer_range=0.2) if quick else rwkv7_tiny_config())
    torch.manual_seed(0)
    model = spread_gates(RWKV7ForCausalLM(cfg).eval())
    return (wl.WriteLens(model), _random_tokens(cfg.vocab_size, 0), _random_tokens(cfg.vocab_size, 1),
            "random-init RWKV-7 on random tokens (smoke run: no meaning)")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gdn-tiny", choices=sorted(SITES) + list(ORGANISMS),
                        help="zoo model (default gdn-tiny); *-mqar: an organism's known-answer table")
    parser.add_argument("--out", default=None, help="output folder (default runs/main_job, or runs/main_job_<model>)")
    parser.add_argument("--random", action="store_true", help="random-init model (no zoo model needed)")
    parser.add_argument("--quick", action="store_true", help="tiny budget (smoke test)")
    parser.add_argument("--layer", type=int)
    parser.add_argument("--head", type=int)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: on a shared 2-core machine more threads only stall)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--no-sae", action="store_true",
                        help="organisms: leave out the WriteSAE rows (training one SAE per located head)")
    parser.add_argument("--keep-states", action="store_true",
                        help="keep the extracted states (states/) and the SAE's training checkpoints; by default only "
                             "what the report needs stays (summary, result JSONs, report.html, figures, the final SAE)")
    args = parser.parse_args(argv)
    if args.model in ORGANISMS:
        return organism_job(args)
    cfg = MainJobConfig(**(QUICK if args.quick else {}))
    if not args.quick:
        cfg.layer, cfg.head = SITES[args.model]
    if args.layer is not None:
        cfg.layer = args.layer
    if args.head is not None:
        cfg.head = args.head
    if args.threads:
        torch.set_num_threads(args.threads)
    show = not args.no_progress
    out = Path(args.out or ("runs/main_job" if args.model == "gdn-tiny" else f"runs/main_job_{args.model}"))
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    times: dict[str, float] = {}

    def step(name: str):
        times[name] = round(time.perf_counter() - started - sum(times.values()), 2)
        print(f"[{time.perf_counter() - started:6.1f}s] {name} done", flush=True)

    lens, train_tokens, heldout_tokens, description = load_model(args.model, args.random, args.quick)
    site = (cfg.layer, cfg.head)
    lens.site(*site)  # raises a named error for a bad site
    print(f"{description}\n{lens}\nsite L{cfg.layer}H{cfg.head}", flush=True)
    step("load")

    # 1. extract per-position states of the site and train a WriteSAE (BilinearSAE) on them
    wl.extract(lens, train_tokens(cfg.n_train_seqs, cfg.train_seq_len), sites=[site], target="sampled_positions",
               out_dir=out / "states", positions_per_seq=cfg.positions_per_seq, seed=0, batch_size=16,
               min_position=1, overwrite=True, progress=show)
    data = StateDataset.from_shards(out / "states", cfg.layer, cfg.head)
    step("extract")
    s = lens.site(*site)
    rank = SAE_RANK.get(args.model, 1)
    sae = BilinearSAE(d_k=s.d_k, d_v=s.d_v, n_features=cfg.n_features, k=cfg.k, rank=rank, seed=cfg.seed,
                      metadata={"layer": cfg.layer, "head": cfg.head, "target": "sampled_positions"})
    trained = train_sae(sae, data, TrainConfig(lr=3e-3, lr_min=3e-4, warmup_steps=min(50, cfg.train_steps // 5),
                                                batch_size=cfg.batch_size,
                                                steps=cfg.train_steps, seed=cfg.seed, val_fraction=0.1,
                                                eval_every=max(cfg.train_steps // 3, 1), log_every=100,
                                                resample_every=250, progress=show),
                        out_dir=out / "sae", resume=False)
    sae = trained.sae.eval()
    val = trained.final_val
    step("train")

    # 2. experiments on held-out passages
    heldout = heldout_tokens(cfg.n_eval + cfg.n_prompts, cfg.eval_len)
    evals, prompts = heldout[: cfg.n_eval], heldout[cfg.n_eval :, : cfg.prompt_len]
    rep = replacement_test(lens, sae, site, evals, ReplacementOptions(max_firings=cfg.max_firings, seed=cfg.seed,
                                                                      progress=show))
    rep.to_json(out / "replacement.json")
    rep_next = replacement_test(lens, sae, site, evals, ReplacementOptions(
        max_firings=cfg.max_firings, seed=cfg.seed, kl_position="next", progress=show))
    rep_next.to_json(out / "replacement_next.json")
    # the population reruns only the firings rep lacks, with a per-batch floor (the null edit at every 4th new
    # firing, beside the reused firings' own): rep's 600 firings already hold one null each
    rep_pop = replacement_test(lens, sae, site, evals, ReplacementOptions(
        max_firings=None, cap_per_atom=cfg.population_cap, seed=cfg.seed, null_every=4, progress=show), reuse=rep)
    rep_pop.to_json(out / "replacement_population.json")
    step("replacement")
    counts = torch.bincount(torch.tensor(rep.atom), minlength=cfg.n_features)
    atoms = counts.argsort(descending=True)[: cfg.n_attr_atoms].tolist()
    att = attribution(lens, sae, site, evals[: cfg.n_attr_passages], atoms, cfg.epsilons,
                      AttributionOptions(epsilon_mode="write_norm", target_ranks=(1, 10, 50), seed=cfg.seed,
                                         progress=show))
    att.to_json(out / "attribution.json")
    step("attribution")
    ins = install_steering(lens, site, prompts, options=InstallOptions(magnitudes=cfg.magnitudes, seed=cfg.seed,
                                                                        progress=show))
    ins.to_json(out / "install.json")
    step("install")
    scan = scan_site(lens, sae, site, evals, keep_logits=False, show=show)
    rate = torch.bincount(scan.indices[scan.values > 0], minlength=cfg.n_features) / scan.values[..., 0].numel()
    sparse = [a for a in counts.argsort(descending=True).tolist() if 0 < rate[a] < 0.3] or atoms
    card = feature_card(lens, sae, site, evals, sparse[0], scan=scan, progress=show)
    card.to_json(out / "feature_card.json")

    # 3. figures and summary: report.html reads on its own (summary table, a paragraph above every figure)
    headlines = headline_rows(rep, rep_next, rep_pop, att, ins)
    sections = [report.scatter_section(rep), report.scatter_section(rep, "random"), report.ratio_section(rep),
                report.floor_section(rep), report.scatter_section(rep_next, title="KL atom vs delete (next token)"),
                report.win_rate_section([rep]), *(report.attribution_section(att, p) for p in
                                                  ("exact", "linearised", "three_factor")),
                report.install_section(ins), report.dose_section(ins), report.feature_section(card)]
    for sec in sections:
        stem = re.sub(r"[^a-z0-9]+", "_", sec.title.lower()).strip("_")
        plot.save_html(sec.figure, out / "figures" / f"{stem}.html", plotlyjs="directory")
    report.save_report(sections, out / "report.html", title=f"writelens main job — L{cfg.layer}H{cfg.head}",
                       headlines=headlines, intro=f"{description}; SAE: BilinearSAE, {cfg.n_features} features, "
                       f"k = {cfg.k}, rank {rank}, {trained.steps} steps on {len(data)} states of L{cfg.layer}H{cfg.head}"
                       f"; experiments on {cfg.n_eval} held-out passages of {cfg.eval_len} tokens.")
    step("figures")
    stratum = next((c for c in ins.cells if c.stratum == "100-1000" and c.magnitude == 3.0), None)
    summary = {
        "model": description, "site": f"L{cfg.layer}H{cfg.head}", "config": to_jsonable(asdict(cfg)),
        "sae": {"architecture": "bilinear", "n_features": cfg.n_features, "k": cfg.k, "rank": rank,
                "steps": trained.steps,
                "val": val.to_dict() if val is not None else None, "n_states": len(data),
                "health": {"n_dense": trained.health.n_dense, "n_bias_dominated": trained.health.n_bias_dominated,
                           "n_never_fired": trained.health.n_dead, "n_states": trained.health.n_states,
                           "max_fire_rate": float(trained.health.fire_rate.max()), "warnings": trained.warnings}
                if trained.health is not None else None},
        "replacement": rep.summary(), "replacement_next_token": rep_next.summary(),
        "replacement_population": rep_pop.summary(), "attribution": att.summary(),
        "attribution_r2_by_epsilon": {"exact": att.stats_exact.r2_by_epsilon,
                                      "linearised": att.stats_linearised.r2_by_epsilon,
                                      "three_factor": att.stats_three_factor.r2_by_epsilon},
        "attribution_r2_by_rank": {"linearised": att.stats_linearised.r2_by_rank, "exact": att.stats_exact.r2_by_rank},
        "install": ins.summary(),
        "feature_card": card.summary(),
        "headline": {
            "n_firings": rep.stats.n_firings, "win_rate": rep.stats.win_rate.estimate,
            "win_rate_ci": [rep.stats.win_rate.lo, rep.stats.win_rate.hi],
            "strict_chain_rate": rep.stats.strict_chain.estimate,
            "ratio_of_medians_delete_over_atom": rep.stats.ratio_of_medians["delete"],
            "ratio_of_medians_random_over_atom": rep.stats.ratio_of_medians["random"],
            "population_mean_win_rate": rep_pop.stats.population.mean,
            "population_ci": [rep_pop.stats.population.lo, rep_pop.stats.population.hi],
            "population_n_atoms": rep_pop.stats.population.n_atoms,
            "population_n_firings": rep_pop.stats.population.n_firings,
            "next_token_win_rate": rep_next.stats.win_rate.estimate,
            "next_token_strict_chain_rate": rep_next.stats.strict_chain.estimate,
            "r2_exact_direct_path": att.stats_exact.r2, "r2_linearised": att.stats_linearised.r2,
            "r2_three_factor": att.stats_three_factor.r2,
            "install_100_1000_m3_native": stratum.inclusion_native.estimate if stratum else None,
            "install_100_1000_m3_edited": stratum.inclusion_edited.estimate if stratum else None,
            "n_ties": rep.floor.n_ties, "next_token_n_ties": rep_next.floor.n_ties,
            "population_n_ties": rep_pop.floor.n_ties,
            "r2_linearised_at_eps_0.1": att.stats_linearised.r2_by_epsilon.get("0.1"),
        },
        "headline_lines": [h.line() for h in headlines],
        "step_seconds": times, "wall_seconds": round(time.perf_counter() - started, 1),
        "torch_threads": torch.get_num_threads(),
    }
    (out / "summary.json").write_text(json.dumps(to_jsonable(summary), indent=1))
    if not args.keep_states:  # the report needs none of these: extracted states, checkpoints, the best-val copy
        for sub in (out / "states", out / "sae" / "checkpoints", out / "sae" / "best"):
            shutil.rmtree(sub, ignore_errors=True)
    print("\n".join(summary["headline_lines"]))
    print(f"wrote {out}/summary.json, report.html, figures/, sae/final in {summary['wall_seconds']}s"
          + ("" if args.keep_states else " (states and checkpoints removed; --keep-states keeps them)"))
    return summary


def headline_rows(rep, rep_next, rep_pop, att, ins) -> list[report.Headline]:
    """Each headline figure with its condition (site, scale mode, KL position, n, interval, ties, epsilon)."""
    rows = [report.replacement_headline("replacement win rate", rep,
                                        "atom beats delete, one firing per (passage, position)"),
            report.replacement_headline("next-token win rate", rep_next, "atom beats delete"),
            report.population_headline(rep_pop), report.attribution_headline(att, "linearised", at=0.1)]
    install = report.install_headline(ins, "100-1000", 3.0)
    return rows + ([install] if install is not None else [])


if __name__ == "__main__":
    main()
