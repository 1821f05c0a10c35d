"""NativePass: one native pass, edited rows continued from it — equal to the full edited forward and to the float64
oracle on all three families; positions before a row's first edit bitwise the unedited run."""

from __future__ import annotations

import pytest
import torch
from models import ids, mamba2, qwen35, rel, rwkv7

import writelens as wl
from writelens import errors
from writelens.fastpath import NativePass

TOL = 1e-5
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(family: str):
    if family == "gdn":
        return qwen35(layers=4, seed=1)
    if family == "mamba2":
        return mamba2(groups=2, d_state=16, seed=1)
    pytest.importorskip("rwkv7_hf")
    return rwkv7(seed=1)


FAMILIES = ["gdn", "mamba2", "rwkv7"]


def _rows(lens, T: int):
    """Rows on 3 passages: different layers, heads, positions (both sides of a 64-token state boundary), several
    edits per row, a row without edits, two rows of one passage."""
    L = lens.recurrent_layers
    s = lens.site(L[0], 0)
    g = torch.Generator().manual_seed(3)
    k, v = torch.randn(s.d_k, generator=g), torch.randn(s.d_v, generator=g)
    return [
        (0, [wl.Delete(L[-1], 1, T - 20)]),
        (1, [wl.Replace(L[0], 0, 70, key=k, value=v, scale=0.5), wl.Delete(L[-1], 0, 75, timing="after_read")]),
        (0, []),
        (2, [wl.Add(L[1], 1, 3, key=k, value=v, scale=2.0)]),
        (1, [wl.Install(L[1], 0, (66, 67), value=v, magnitude=2.0), wl.RandomAtom(L[1], 1, 68, seed=5)]),
        (2, [wl.Delete(L[0], 1, 0)]),
        (0, [wl.Delete(L[1], 0, 64)]),
    ]


@pytest.mark.parametrize("family", FAMILIES)
def test_native_pass_rows_match_full_forward_and_oracle(family):
    lens = wl.WriteLens(_model(family))
    T = 96 if family == "rwkv7" else 140
    x = ids(3, T, seed=4)
    rows = _rows(lens, T)
    native = NativePass(lens, x, {min(e.layer for e in es) for _, es in rows if es})
    got = native.run(rows)
    unedited = lens.run(x).logits
    for i, (p, edits) in enumerate(rows):
        mine = [e for e in edits]
        full = lens.run(x[p : p + 1], edits=mine, _fast=False).logits[0]
        assert rel(got[i], full) < TOL, f"row {i}"
        if i in (1, 4):  # the oracle is slow: two rows with several edits
            ref = lens.run(x[p : p + 1], edits=mine, oracle=True).logits[0]
            assert rel(got[i], ref) < TOL, f"row {i} vs oracle"
        first = min((q for e in edits for q in wl.edits.edit_positions(e)), default=T)
        assert torch.equal(got[i][:first], unedited[p, :first]), f"row {i}: prefix not bitwise native"
    assert torch.equal(got[2], native.logits[0])  # no edits: the native logits
    for tail in (1, 30, T):  # only the last `tail` positions (the unembedding runs on those alone)
        short = native.run(rows, tail=tail)
        for i in range(len(rows)):
            assert short[i].shape[0] == tail
            assert rel(short[i], got[i][T - tail :]) < TOL
    for span in (1, 2, 25):  # only the positions up to first + span (the forward stops there)
        short = native.run(rows, span=span)
        for i, (_, edits) in enumerate(rows):
            if edits:
                first = min(q for e in edits for q in wl.edits.edit_positions(e))
                assert short[i].shape[0] == min(T, first + span)
                assert rel(short[i], got[i][: min(T, first + span)]) < TOL
    lean = NativePass(lens, x, native.layers, tail=30)  # native logits of the last 30 positions only
    assert lean.logits.shape[1] == 30
    for i, short in enumerate(lean.run(rows, tail=5)):
        assert rel(short, got[i][T - 5 :]) < TOL
    assert torch.equal(lean.run(rows[2:3])[0], native.logits[0, T - 30 :])  # tail defaults to what it kept
    with pytest.raises(errors.EditConflictError, match="last 30 positions"):
        lean.run(rows[:1], tail=31)
    with pytest.raises(errors.EditConflictError, match="last 30 positions"):
        lean.run(rows[:1], span=2)
    with pytest.raises(errors.PositionOutOfRangeError):
        native.run(rows[:1], tail=0)
    with pytest.raises(errors.EditConflictError, match="not both"):
        native.run(rows[:1], tail=1, span=1)
    reduced = native.run(rows[:2], reduce=lambda i, logits: (i, float(logits[-1].sum())))
    assert [r[0] for r in reduced] == [0, 1] and reduced[1][1] == pytest.approx(float(got[1][-1].sum()), rel=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_lens_run_prefix_is_bitwise_the_unedited_run(family):
    lens = wl.WriteLens(_model(family))
    T = 80
    x = ids(4, T, seed=6)
    L = lens.recurrent_layers
    edits = [wl.Delete(L[-1], 0, 50, batch=0), wl.Delete(L[0], 1, 20, batch=2), wl.Delete(L[1], 0, 52, batch=3)]
    fast = lens.run(x, edits=edits).logits
    native = lens.run(x).logits
    assert torch.equal(fast[1], native[1])  # a row without edits
    for e in edits:
        assert torch.equal(fast[e.batch, : e.pos], native[e.batch, : e.pos])
    assert rel(fast, lens.run(x, edits=edits, _fast=False).logits) < TOL


@pytest.mark.parametrize("family", FAMILIES)
def test_lens_run_logits_to_keep(family):
    """``logits_to_keep=k``: the last k positions of the same run, on the fast path, the full edited forward, the
    oracle and a captured run; the unedited run's last positions bitwise."""
    lens = wl.WriteLens(_model(family))
    x = ids(3, 70, seed=4)
    L = lens.recurrent_layers
    edits = [wl.Delete(L[0], 1, 30, batch=0), wl.Delete(L[-1], 0, 66, batch=2)]
    full = lens.run(x, edits=edits).logits
    for k in (1, 5, 70):
        fast = lens.run(x, edits=edits, logits_to_keep=k).logits
        assert fast.shape == (3, k, full.shape[-1])
        assert rel(fast, full[:, -k:]) < TOL
        assert rel(lens.run(x, edits=edits, logits_to_keep=k, _fast=False).logits, full[:, -k:]) < TOL
    assert torch.equal(lens.run(x, logits_to_keep=4).logits, lens.run(x).logits[:, -4:])
    out = lens.run(x, cache=True, sites=[(L[0], 0)], logits_to_keep=2)
    assert out.logits.shape[1] == 2 and out.cache.state(L[0], 0, pos=-1).shape[0] == 3
    assert rel(lens.run(x, edits=edits, oracle=True, logits_to_keep=3).logits, full[:, -3:]) < TOL
    for bad in (-1, 71, 1.5, True, "1"):
        with pytest.raises(errors.InputError, match="logits_to_keep"):
            lens.run(x, logits_to_keep=bad)


def test_states_for_rows_equal_the_swept_states():
    lens = wl.WriteLens(_model("gdn"))
    x = ids(3, 150, seed=2)
    call = lens.run(x, cache=True).cache._call(lens.recurrent_layers[1], 0)
    heads = (0, 1)
    rows = torch.tensor([2, 0])
    for t in (10, 63, 64, 100, 149):
        torch.testing.assert_close(call.states_for_rows(heads, t, rows), call._swept_state(heads, t)[rows])


def test_native_pass_errors():
    lens = wl.WriteLens(_model("gdn"))
    x = ids(2, 30, seed=1)
    L = lens.recurrent_layers
    native = NativePass(lens, x, [L[1]])
    with pytest.raises(errors.EditConflictError, match="recorded layers"):
        native.run([(0, [wl.Delete(L[0], 0, 5)])])
    with pytest.raises(errors.BatchRowOutOfRangeError, match="passage 2"):
        native.run([(2, [wl.Delete(L[1], 0, 5)])])
    with pytest.raises(errors.PositionOutOfRangeError):
        native.run([(0, [wl.Delete(L[1], 0, 30)])])
    with pytest.raises(errors.EditConflictError):
        NativePass(lens, x, [])


@pytest.mark.parametrize("family", ["gdn", "mamba2"])
def test_layer_states_equal_per_head_states(family):
    lens = wl.WriteLens(_model(family))
    x = ids(2, 100, seed=3)
    layer = lens.recurrent_layers[1]
    cache = lens.run(x, cache=True).cache
    got = cache.layer_states(layer, [70, 5, 99])
    assert got.shape == (2, 3, lens.adapter.num_heads, lens.site(layer, 0).d_k, lens.site(layer, 0).d_v)
    fresh = lens.run(x, cache=True).cache
    for h in range(lens.adapter.num_heads):
        torch.testing.assert_close(got[:, :, h], fresh.states(layer, h, [70, 5, 99]))


def test_groups_never_cover_more_token_rows_than_the_native_pass():
    """A group of edited rows forwards rows × (T − s0) token-rows at most N × T (the native pass's own forward), so
    its transient memory is bounded by the native forward's (Mamba-2's torch scan at real widths: ~200 MB a row)."""
    from writelens.fastpath import GROUP_ROWS, _groups

    T = 256
    plans = [(p, 0, i, 0, ["edit"]) for i, p in enumerate(range(100, 140))]
    for budget in (T, 4 * T, 64 * T):
        groups = _groups(plans, T, budget)
        assert sorted(pl[2] for g in groups for pl in g) == list(range(40))
        assert all(len(g) * (T - g[0][0]) <= budget or len(g) == 1 for g in groups)
        assert len(groups[0]) == min(GROUP_ROWS, max(1, budget // (T - 100)))  # as many as the budget admits
