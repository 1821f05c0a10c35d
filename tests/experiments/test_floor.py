"""Null-edit noise floors: the rule on hand-made numbers, the floor of the replacement test and of slot erasure on
the tiny model and on the shipped gdn-tiny, ties (after_read at the final position), the warning, the plots."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import writelens as wl
from writelens import plot
from writelens.errors import NoiseFloorWarning
from writelens.experiments.common import kl_from_logits, run_rows, scan_site, unreachable
from writelens.experiments.erasure import ErasureOptions, ErasureResult, slot_erasure
from writelens.experiments.floor import below_floor, floor_threshold, noise_floor, null_edits
from writelens.experiments.replacement import (
    ReplacementOptions,
    ReplacementResult,
    replacement_stats,
    replacement_test,
)

from .helpers import lens, passages, sae

LAYER, HEAD = 1, 0


def test_rule_threshold_below_and_warning_on_hand_made_numbers():
    assert floor_threshold([1e-14, -3e-14, 2e-14], 10) == pytest.approx((2e-14, 3e-14, 3e-13))
    assert np.isnan(floor_threshold([], 10)[2])
    assert below_floor([2e-13, 3e-13, 4e-13, -1e-13, np.nan], 3e-13).tolist() == [True, True, False, True, False]
    assert below_floor([0.0, 1.0], float("nan"), [False, True]).tolist() == [False, True]
    effects = {"atom": [1e-14, 0.1, 1e-14, 0.3], "delete": [2e-14, 0.2, 0.5, 1e-14]}
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoiseFloorWarning)  # 1 tie of 4: no warning
        f = noise_floor([1e-14, 3e-14], effects, multiple=10, null_edit="restore", metric="KL",
                        headline=("atom", "delete"))
    assert (f.threshold, f.n_ties, f.n_all_below, f.below) == (pytest.approx(3e-13), 1, 1, {"atom": 2, "delete": 2})
    assert f.warning == "" and f.tie_fraction == 0.25
    with pytest.warns(NoiseFloorWarning, match="3 of 4 firings"):
        f = noise_floor([1e-14], effects, multiple=10, null_edit="zero", metric="KL", headline=("atom", "delete"),
                        unreachable=[False, True, False, True])
    assert f.n_ties == 3 and f.n_unreachable == 2 and "3 of 4" in f.warning


def test_stats_leave_ties_out_of_every_rate():
    a, d, r = [1e-14, 0.1, 0.3, 1e-14, 0.2], [2e-14, 0.2, 0.1, 0.5, 0.4], [1e-14, 0.3, 0.2, 0.6, 1e-14]
    s = replacement_stats(a, d, r, [0, 0, 1, 1, 1], [0, 1, 2, 3, 4], n_bootstrap=200, min_firings_per_atom=1,
                          floor_threshold=1e-12)
    # firing 0: every KL below the floor (tie); 3: only the atom is (a decided win); 4: only random is
    assert s.ties == {"win_rate": 1, "atom_beats_random": 1, "strict_chain": 1}
    assert (s.win_rate.estimate, s.win_rate.n) == (pytest.approx(3 / 4), 4)
    assert (s.strict_chain.estimate, s.strict_chain.n) == (pytest.approx(2 / 4), 4)
    assert (s.atom_beats_random.estimate, s.atom_beats_random.n) == (pytest.approx(2 / 4), 4)
    assert s.population.per_atom == {"0": 1.0, "1": pytest.approx(2 / 3)}
    assert s.bootstrap_by_atom.estimate == pytest.approx(3 / 4) and s.n_firings == 5
    old = replacement_stats(a, d, r, [0, 0, 1, 1, 1], [0, 1, 2, 3, 4], n_bootstrap=200)
    assert old.win_rate.n == 5 and old.ties == {"win_rate": 0, "atom_beats_random": 0, "strict_chain": 0}


def test_null_edits_are_null_to_rounding():
    ids = passages(2, 20)
    out = lens().run(ids, cache=True, sites=[(LAYER, HEAD)])
    w = out.cache.write(LAYER, HEAD)
    rows = [(p, null_edits(LAYER, HEAD, t, w.key[p, t], w.value[p, t], float(w.beta[p, t]), kind, timing))
            for p in range(2) for t in (2, 11, 19) for kind in ("restore", "zero") for timing in ("with_read",
                                                                                                  "after_read")]
    kls = run_rows(lens(), ids, rows, lambda i, lg: float(kl_from_logits(out.logits[rows[i][0]], lg).max()),
                   show=False)
    assert max(kls) < 1e-9
    delete = run_rows(lens(), ids, [(0, [wl.Delete(LAYER, HEAD, 11)])],
                      lambda i, lg: float(kl_from_logits(out.logits[0], lg).max()), show=False)
    assert delete[0] > 1e4 * max(kls)


def test_floor_is_tiny_with_read_and_round_trips():
    ids = passages(3, 24)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoiseFloorWarning)
        res = replacement_test(lens(), sae(), (LAYER, HEAD), ids, ReplacementOptions(max_firings=30, progress=False))
    f = res.floor
    assert f.n_null == len(res.kl_null) == 30 == f.n_items and f.null_edit == "restore"
    assert 0 <= f.median <= f.max < 1e-9 and f.threshold == pytest.approx(10 * f.max)
    assert np.median(res.kl_delete) > 1e3 * f.threshold
    assert f.n_ties < 3 and f.warning == "" and f.n_unreachable == 0
    assert res.stats.win_rate.n == 30 - res.stats.ties["win_rate"]
    s = res.summary()
    assert s["floor_threshold"] == f.threshold and s["n_ties"] == f.n_ties and s["below_floor_warning"] == ""
    back = ReplacementResult.from_json(res.to_json())
    assert back.floor == f and back.kl_null == pytest.approx(res.kl_null)
    zero = replacement_test(lens(), sae(), (LAYER, HEAD), ids,
                            ReplacementOptions(max_firings=30, null_edit="zero", progress=False))
    assert zero.floor.null_edit == "zero" and zero.floor.max < 1e-9 and zero.kl_atom == res.kl_atom


def test_after_read_final_position_firings_are_ties_and_most_ties_warn():
    ids = passages(3, 24)
    opts = dict(timing="after_read", kl_position="last", progress=False, max_firings=None)
    assert unreachable([21, 22, 23], 24, "last", "after_read") == [False, False, True]
    assert unreachable([23], 24, "last", "with_read") == [False]
    mixed = replacement_test(lens(), sae(), (LAYER, HEAD), ids, ReplacementOptions(min_position=21, **opts))
    final = np.asarray(mixed.position) == 23
    assert final.sum() == 3 and mixed.floor.n_unreachable == 3
    for col in (mixed.kl_atom, mixed.kl_delete, mixed.kl_random):  # the edit cannot reach the last distribution
        assert np.all(np.asarray(col)[final] <= mixed.floor.threshold)
    assert mixed.stats.ties["win_rate"] >= 3 and mixed.stats.win_rate.n == 9 - mixed.stats.ties["win_rate"]
    assert np.median(np.asarray(mixed.kl_delete)[~final]) > mixed.floor.threshold  # earlier firings do reach it
    with pytest.warns(NoiseFloorWarning, match="3 of 3 firings"):
        only = replacement_test(lens(), sae(), (LAYER, HEAD), ids, ReplacementOptions(min_position=23, **opts))
    assert only.floor.n_ties == 3 and only.stats.win_rate.n == 0 and "3 of 3" in only.floor.warning
    assert "3 of 3" in only.summary()["below_floor_warning"] and only.floor.warning in only.notes


def test_erasure_floor_and_zero_ties_in_wilcoxon():
    ids = passages(4, 24, seed=6)
    scan = scan_site(lens(), sae(), (2, 1), ids, min_position=1, keep_logits=False, show=False)
    scan_feature = int(torch.bincount(scan.indices[scan.values > 0]).argmax())
    opts = ErasureOptions(control_doses=(0.0,), dose_response=(), n_controls=8, progress=False, n_bootstrap=200)
    res = slot_erasure(lens(), sae(), (2, 1), ids, scan_feature, opts)
    f = res.floor
    assert f.n_null == len(res.delta_logp_null) == len(res.delta_logp) == f.n_items > 0
    assert f.max < 1e-6 and f.metric == "|delta log p|"
    assert res.controls[0].n_below_floor == res.controls[0].n  # a zero dose is below the floor everywhere
    assert res.controls[0].wilcoxon.n_zero == res.controls[0].n
    assert res.test_wilcoxon.n_zero >= f.n_all_below
    assert ErasureResult.from_json(res.to_json()).floor == f
    fig = plot.erasure_histogram(res)
    assert len(fig.data) == 2 and "below the floor" in fig.layout.title.text


def test_plots_mark_the_floor():
    ids = passages(3, 24)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoiseFloorWarning)
        res = replacement_test(lens(), sae(), (LAYER, HEAD), ids, ReplacementOptions(
            min_position=22, timing="after_read", max_firings=None, progress=False))
    fig = plot.kl_scatter(res)
    names = [t.name for t in fig.data]
    assert "tie (both below the floor)" in names and any(n.startswith("noise floor τ") for n in names)
    tie = fig.data[names.index("tie (both below the floor)")]
    assert len(tie.x) == res.stats.ties["win_rate"] and f"{len(tie.x)} ties excluded" in fig.layout.title.text
    hist = plot.kl_histogram(res)
    assert [t.name for t in hist.data] == ["atom", "delete", "random", "null"]
    assert "floor τ" in hist.layout.annotations[0].text
    assert plot.kl_ratio_density(res).data[0].name.endswith("ties left out)")


def test_gdn_tiny_floor_with_read_vs_after_read():
    """The shipped gdn-tiny, L4H1, zoo WriteSAE, KL at the last position: with_read effects sit far above the
    null-edit floor; after_read effects mostly do not (the audit: 93 % of delete firings below 10x the null max)."""
    model, tok = wl.zoo.load("gdn-tiny")
    zlens = wl.WriteLens(model, tokenizer=tok)
    zsae = wl.zoo.load_sae("gdn-tiny", 4, 1)
    ids = wl.zoo.heldout_passages(6, 64)
    base = dict(max_firings=60, progress=False, n_bootstrap=200)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoiseFloorWarning)
        wr = replacement_test(zlens, zsae, (4, 1), ids, ReplacementOptions(**base))
    with pytest.warns(NoiseFloorWarning, match="ties of atom vs delete"):
        ar = replacement_test(zlens, zsae, (4, 1), ids, ReplacementOptions(timing="after_read", **base))
    assert wr.floor.max < 1e-9 and ar.floor.max < 1e-9
    assert wr.floor.below["delete"] < 0.2 * 60 and wr.floor.n_ties < 0.2 * 60
    assert ar.floor.below["delete"] > 0.5 * 60 and ar.floor.n_ties > 0.5 * 60
    assert ar.stats.win_rate.n == 60 - ar.floor.n_ties


def test_cli_exposes_the_floor_options():
    from typer.testing import CliRunner

    from writelens.cli import app

    res = CliRunner().invoke(app, ["replace-test", "--help"])
    text = " ".join(res.output.split())
    assert res.exit_code == 0 and "--null-edit" in text and "[restore|zero]" in text and "--floor-multiple" in text
