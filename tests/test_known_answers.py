"""Known answers on the shipped associative-recall organisms (cheap sizes of the docs' "Known answers" table).

The bars are the issue's: deleting the located pair-holding writes drops that pair's recall by ≥ 0.8 while the
other queries keep ≥ 0.9; the model's own K → V write moved into a K → V′ passage makes it answer V in ≥ 0.9 of
trials (≈ 0 unedited); erasing the slot removes the pair's recall, random controls do not.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

import writelens as wl
from writelens.experiments.known_answers import KnownAnswers
from writelens.experiments.recall_edits import (
    ErasureKnownOptions,
    TransplantOptions,
    slot_erasure_known,
    transplant,
)
from writelens.experiments.recall_map import MapOptions, mechanism_map
from writelens.zoo.train_mqar import heldout_recall

ORGANISMS = [n for n, e in wl.zoo.registry.ENTRIES.items() if e.task == "mqar"]
needs_rwkv7 = pytest.mark.skipif(importlib.util.find_spec("rwkv7_hf") is None, reason="needs rwkv7-hf")


@pytest.fixture(scope="module", params=[pytest.param(n, marks=needs_rwkv7) if n.startswith("rwkv7") else n
                                        for n in ORGANISMS])
def organism(request):
    torch.manual_seed(0)
    model, tok = wl.zoo.load(request.param)
    assert tok is None
    recorded = json.loads((wl.zoo.path(request.param) / "known_answers.json").read_text())
    return request.param, wl.WriteLens(model), wl.zoo.task(request.param), recorded


def test_heldout_recall(organism):
    name, lens, task, _ = organism
    for n_pairs in (8, 16):
        assert heldout_recall(lens.model, task, n_pairs, 64, seed=1) >= 0.95, (name, n_pairs)


def test_mechanism_map_locates_the_pair_holding_writes(organism):
    name, lens, task, recorded = organism
    r = mechanism_map(lens, task, MapOptions(n_passages=32, seed=123))
    assert r.native_target_recall >= 0.95 and r.native_other_recall >= 0.95
    assert r.passes, r.summary()
    assert r.target_drop >= 0.8 and r.located_other_recall >= 0.9
    assert [list(c) for c in r.located][:1] == recorded["located"][:1]  # the same strongest cell on fresh passages
    assert KnownAnswers.from_dict(recorded["result"]).mechanism.located == [tuple(c) for c in recorded["located"]]


def test_transplant_moves_the_pair(organism):
    name, lens, task, recorded = organism
    cells = [tuple(c) for c in recorded["located"]]
    r = transplant(lens, task, cells, TransplantOptions(n_passages=32, magnitudes=(0.0, 1.0), seed=7))
    assert r.native_new_answer_rate <= 0.1 and r.native_old_answer_rate >= 0.9
    # install orients the foreign value against the passage's own key (on RWKV-7 the two keys point opposite ways in
    # about half the passages; unoriented, install reached V in 0.20 of them)
    for mode in ("replace", "install"):
        assert r.best(mode, 1.0).new_answer_rate >= 0.9, (name, mode)
        assert r.best(mode, 1.0).other_recall >= 0.9
    # magnitude 0: replace = delete of the native V′ write, add = nothing; neither answers V
    assert r.best("replace", 0.0).new_answer_rate <= 0.1 and r.best("add", 0.0).old_answer_rate >= 0.9


def test_slot_erasure_and_controls(organism):
    name, lens, task, recorded = organism
    cells = [tuple(c) for c in recorded["located"]]
    r = slot_erasure_known(lens, task, cells, ErasureKnownOptions(n_passages=64, seed=5))
    for mode in ("erase_write", "erase_key_projection"):
        assert r.drop(mode) >= 0.8 and r.get(mode).other_recall >= 0.9, (name, mode)
    assert r.get("random_key_projection").target_recall >= 0.85, name
    if name.startswith("gdn"):
        assert r.get("random_write").target_recall >= 0.9
    # Mamba-2 misses the equal-norm random rank-1 control (docs "Known answers": its unnormalised C and B make a
    # random atom read about as strongly at the query as the native write); the figure is recorded, not asserted


def test_recorded_table_matches_its_rows(organism):
    name, _, _, recorded = organism
    res = KnownAnswers.from_dict(recorded["result"])
    assert res.table() == recorded["table"] and res.passes == recorded["passes"]
    misses = [r.figure for r in res.rows if not r.passes]
    documented = ("random control of equal norm (write)",) if name.startswith("mamba2") else ()
    assert all(any(d in m for d in documented) for m in misses), misses  # only the documented misses
