"""WriteSAEs against the organisms' known pair-holding writes (writelens.experiments.recall_sae).

The oracle: a tied BilinearSAE whose atoms *are* the probe passages' own pair-holding writes (k=1) must be found
as each write's top feature with |cos| 1 on both factors, and replacing each write by it must leave recall as it
is and beat ``Delete`` on every firing. A trained SAE is checked for shape, provenance and finite figures only."""

from __future__ import annotations

import pytest
import torch

import writelens as wl
from writelens.experiments.recall_map import probe_batch
from writelens.experiments.recall_sae import (
    RecallSAEOptions,
    _cell_writes,
    answer_attribution,
    fixed_directions,
    sae_recovery,
    sae_replacement_known,
    top_features,
    train_recall_saes,
)
from writelens.sae import BilinearSAE

CELL = (0, 0, 1)  # gdn-mqar: the located pair-holding write (docs "Known answers")


@pytest.fixture(scope="module")
def organism():
    model, _ = wl.zoo.load("gdn-mqar")
    return wl.WriteLens(model), wl.zoo.task("gdn-mqar")


def _oracle_sae(lens, task, o: RecallSAEOptions) -> BilinearSAE:
    """Atoms = the exact pair-holding writes of the recovery and replacement probe passages."""
    keys, values = [], []
    for seed in (o.seed, o.seed + 1):
        b = probe_batch(task, o.n_pairs, o.n_recovery_passages if seed == o.seed else o.n_passages, seed)
        key, value, _coef, _p = _cell_writes(lens, b, [CELL])[0]
        keys.append(key)
        values.append(value)
    key, value = torch.cat(keys), torch.cat(values)
    sae = BilinearSAE(d_k=key.shape[1], d_v=value.shape[1], n_features=len(key), k=1, rank=1, tied=True, seed=0)
    with torch.no_grad():
        sae.dec_k.copy_(torch.nn.functional.normalize(key, dim=-1)[:, None])
        sae.dec_v.copy_(torch.nn.functional.normalize(value, dim=-1)[:, None])
    return sae.eval()


def test_top_features_matches_dense_encoding():
    torch.manual_seed(0)
    sae = BilinearSAE(d_k=8, d_v=6, n_features=32, k=3, rank=1, seed=1).eval()
    writes = torch.randn(20, 8, 6)
    feat, contrib = top_features(sae, writes)
    dense = sae.encode(writes).detach()
    norms = sae.atoms(torch.arange(32)).matrix().flatten(1).norm(dim=-1).detach()
    score = dense * norms
    for i in range(20):
        if score[i].max() > 0:
            assert int(feat[i]) == int(score[i].argmax())
            assert float(contrib[i]) == pytest.approx(float(score[i].max()), rel=1e-5)
        else:
            assert int(feat[i]) == -1


def test_oracle_sae_recovers_every_write_and_replaces_exactly(organism):
    lens, task = organism
    o = RecallSAEOptions(n_passages=16, n_recovery_passages=32, min_contexts=1)
    sae = _oracle_sae(lens, task, o)
    rec = sae_recovery(lens, task, [CELL], {CELL[:2]: sae}, o).per_cell[0]
    assert rec.n == 32 and rec.n_unencoded == 0
    assert rec.key_cos_median == pytest.approx(1.0, abs=1e-5)
    assert rec.value_cos_median == pytest.approx(1.0, abs=1e-5)
    assert rec.frac_key_ge_09 == 1.0 and rec.frac_key_tokens_ge_09 == 1.0
    for scale in ("coefficient", "matched_norm"):
        res = sae_replacement_known(lens, task, [CELL], {CELL[:2]: sae}, o, scale=scale)
        assert res.recall("atom") == pytest.approx(sum(res.native_hit) / len(res.native_hit))
        assert res.recall("delete") <= 0.2  # the located write holds the pair
        assert max(res.kl["atom"]) < 1e-3 < min(res.kl["delete"])  # the atom is the write: only rounding is left
        assert res.win_kl.estimate == 1.0 and res.win_kl.n == 16
        assert res.floor.n_null == 16


def test_fixed_directions_are_unit_and_signed(organism):
    lens, task = organism
    keys, vals = fixed_directions(lens, task, CELL, RecallSAEOptions(n_recovery_passages=32))
    assert keys and vals
    for u in [*keys.values(), *vals.values()]:
        assert float(u.norm()) == pytest.approx(1.0, abs=1e-5)


def test_trained_saes_record_provenance_and_report(organism):
    lens, task = organism
    o = RecallSAEOptions(pair_counts=(4,), n_train=8, n_features=32, k=2, steps=20, batch_size=64,
                         n_passages=8, n_recovery_passages=16, min_contexts=1)
    saes = train_recall_saes(lens, task, [CELL[:2]], o, model_name="gdn-mqar")
    sae = saes[CELL[:2]]
    assert sae.cfg.metadata["target"] == "writes" and sae.cfg.metadata["head"] == 0
    rec = sae_recovery(lens, task, [CELL], saes, o).per_cell[0]
    assert 0.0 <= rec.key_cos_median <= 1.0 and 0.0 <= rec.ceiling_key_cos_median <= 1.0
    res = sae_replacement_known(lens, task, [CELL], saes, o)
    assert len(res.kl["atom"]) == 8 and "n_ties" in res.summary()


def test_answer_attribution_exact_at_small_epsilon(organism):
    lens, task = organism
    o = RecallSAEOptions(n_passages=8, n_recovery_passages=16)
    sae = _oracle_sae(lens, task, RecallSAEOptions(n_passages=8, n_recovery_passages=16, min_contexts=1))
    res = answer_attribution(lens, task, CELL, sae, o, epsilons=(0.01,), n_atoms=4)
    b = probe_batch(task, o.n_pairs, o.n_passages, o.seed + 2)
    assert sorted(set(res.t)) == sorted(set(b.query_pos[:, 0].tolist()))  # measured at the target query
    assert res.stats_linearised.r2 > 0.99


def test_direction_ceilings_pair_atoms_are_fixed_key_atoms_are_not(organism):
    """On gdn-mqar the pair-holding write is one fixed k̂ ⊗ v̂ per (key, value) pair, not per key token (the short
    conv mixes the value token into the key): the recovery bar is reachable by a dictionary of pair atoms only."""
    from writelens.errors import ExperimentError
    from writelens.experiments.recall_ceiling import direction_ceilings

    lens, task = organism
    res = direction_ceilings(lens, task, CELL, n_passages=2048, min_contexts=3)
    pair, key_tok = res.get("key", "pair"), res.get("key", "key token")
    assert pair.n_groups > 1000 and pair.median > 0.99 and pair.share_ge_09 > 0.99
    assert key_tok.n_groups == task.n_keys and key_tok.median < 0.85 and key_tok.share_ge_09 == 0.0
    assert res.get("value", "value token").median > 0.98
    assert "L0H0+1" in res.summary()["condition"]
    assert type(res).from_json(res.to_json()).rows == res.rows
    with pytest.raises(ExperimentError, match="outside the passages"):
        direction_ceilings(lens, task, (0, 0, 60), n_passages=8)
