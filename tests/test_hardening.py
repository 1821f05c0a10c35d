"""Bad inputs to the Python API: each raises its named error (with a message saying what to do) or behaves as
documented. One line per case; the CLI's cases are in test_hardening_cli.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from models import ids, mamba2, qwen35

import writelens as wl
from writelens import errors
from writelens.validate import check_device, check_out_dir

D = 16  # d_k = d_v of the tiny Qwen3.5's heads
ONE = torch.ones(D)


@pytest.fixture(scope="module")
def lens():
    return wl.WriteLens(qwen35(layers=4, hk=1, hv=2))


@pytest.fixture(scope="module")
def x():
    return ids(2, 12, seed=1)


# ---- item 2: edits, at construction -----------------------------------------------------------------------------

BAD_EDITS = [
    (lambda: wl.Delete(0, 0, 2.5), errors.EditShapeError, "Delete.pos must be an integer, got 2.5"),
    (lambda: wl.Delete(0, 0, 3.0), errors.EditShapeError, "pos must be an integer"),
    (lambda: wl.Delete(0, 0, True), errors.EditShapeError, "got the bool"),
    (lambda: wl.Delete(0, 0, "3"), errors.EditShapeError, "pos must be an integer"),
    (lambda: wl.Delete(1.0, 0, 3), errors.EditShapeError, "Delete.layer must be an integer"),
    (lambda: wl.Replace(0, 0.5, 3, key=ONE, value=ONE), errors.EditShapeError, "Replace.head must be an integer"),
    (lambda: wl.Delete(0, 0, -1), errors.PositionOutOfRangeError, "negative"),
    (lambda: wl.Delete(-1, 0, 1), errors.SiteOutOfRangeError, "negative"),
    (lambda: wl.Delete(0, 0, 1, batch=[]), errors.EditShapeError, "no row"),
    (lambda: wl.Delete(0, 0, 1, batch=[0, 0]), errors.EditShapeError, "twice"),
    (lambda: wl.Delete(0, 0, 1, batch=1.0), errors.EditShapeError, "batch must be an integer"),
    (lambda: wl.Delete(0, 0, 1, batch=-1), errors.BatchRowOutOfRangeError, "from 0"),
    (lambda: wl.Replace(0, 0, 1, key=ONE, value=ONE, scale=-1.0), errors.EditShapeError, "negative"),
    (lambda: wl.Replace(0, 0, 1, key=ONE, value=ONE, scale=float("nan")), errors.EditShapeError, "not finite"),
    (lambda: wl.Replace(0, 0, 1, key=ONE, value=ONE, scale="big"), errors.EditShapeError, "must be a number"),
    (lambda: wl.RandomAtom(0, 0, 1, scale=-0.5), errors.EditShapeError, "negative"),
    (lambda: wl.RandomAtom(0, 0, 1, seed=1.5), errors.EditShapeError, "seed must be an integer"),
    (lambda: wl.Replace(0, 0, 1, key=torch.zeros(D), value=ONE), errors.EditShapeError, "Replace.key is all zeros"),
    (lambda: wl.Replace(0, 0, 1, key=ONE, value=torch.zeros(D)), errors.EditShapeError, "Replace.value is all zeros"),
    (lambda: wl.Install(0, 0, (3,), value=torch.zeros(D)), errors.EditShapeError, "Install.value is all zeros"),
    (lambda: wl.Install(0, 0, (3,), value=ONE, key=torch.zeros(D)), errors.EditShapeError, "key=None"),
    (lambda: wl.Install(0, 0, (1.5, 2), value=ONE), errors.EditShapeError, "Install.positions must be an integer"),
    (lambda: wl.Install(0, 0, (2, 2), value=ONE), errors.EditShapeError, "twice"),
    (lambda: wl.Install(0, 0, (-1,), value=ONE), errors.PositionOutOfRangeError, "negative"),
    (lambda: wl.Install(0, 0, (), value=ONE), errors.EditShapeError, "at least one position"),
    (lambda: wl.Install(0, 0, (3,), value=ONE, magnitude=float("inf")), errors.EditShapeError, "not finite"),
    (lambda: wl.Add(0, 0, 1, matrix=torch.ones(D, D), scale=float("nan")), errors.EditShapeError, "not finite"),
]


@pytest.mark.parametrize("make, error, match", BAD_EDITS, ids=[c[2] for c in BAD_EDITS])
def test_bad_edit_is_refused_at_construction(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_integer_like_fields_are_normalised():
    e = wl.Delete(np.int64(0), torch.tensor(1), np.int32(3), batch=torch.tensor([1, 0]))
    assert (e.layer, e.head, e.pos, e.batch) == (0, 1, 3, (1, 0)) and type(e.pos) is int
    assert wl.Install(0, 0, torch.tensor([4, 5]), value=ONE).positions == (4, 5)
    assert wl.Install(0, 0, 4, value=ONE).positions == (4,)
    assert wl.Delete(0, 0, 1, batch=np.int64(1)).batch == 1


# ---- item 2: edits, at run time ---------------------------------------------------------------------------------

CONFLICTS = [
    [wl.Delete(0, 0, 5), wl.Delete(0, 0, 5)],
    [wl.Delete(0, 0, 5), wl.Replace(0, 0, 5, key=ONE, value=ONE)],
    [wl.Replace(0, 0, 5, key=ONE, value=ONE), wl.RandomAtom(0, 0, 5, seed=1)],
    [wl.Delete(0, 0, 5, batch=1), wl.Delete(0, 0, 5)],
    [wl.Delete(0, 0, 5, timing="after_read"), wl.Delete(0, 0, 5)],
]


@pytest.mark.parametrize("edits", CONFLICTS, ids=range(len(CONFLICTS)))
def test_two_replacing_edits_at_one_site_position_and_row_conflict(lens, x, edits):
    with pytest.raises(errors.EditConflictError, match="both replace the native write at L0H0 position 5"):
        lens.run(x, edits=edits)
    with pytest.raises(errors.EditConflictError, match="keep one"):
        lens.generate(x, edits=edits, max_new_tokens=1)


def test_non_conflicting_combinations_run(lens, x):
    """Different rows, heads or positions, and replacing + additive edits at one place, are all fine."""
    for edits in ([wl.Delete(0, 0, 5, batch=0), wl.Replace(0, 0, 5, key=ONE, value=ONE, batch=1)],
                  [wl.Delete(0, 0, 5), wl.Delete(0, 1, 5), wl.Delete(0, 0, 6)],
                  [wl.Delete(0, 0, 5), wl.Add(0, 0, 5, matrix=torch.ones(D, D)),
                   wl.RandomAtom(0, 0, 5, replace=False), wl.Install(0, 0, (5,), value=ONE)]):
        assert torch.isfinite(lens.run(x, edits=edits).logits).all()


def test_adds_at_one_place_add_up(lens, x):
    m = torch.randn(D, D, generator=torch.Generator().manual_seed(0))
    twice = lens.run(x, edits=[wl.Add(0, 0, 5, matrix=m), wl.Add(0, 0, 5, key=ONE, value=ONE)]).logits
    once = lens.run(x, edits=[wl.Add(0, 0, 5, matrix=m + torch.outer(ONE, ONE))]).logits
    assert (twice - once).abs().max() < 1e-4
    assert (twice - lens.run(x).logits).abs().max() > 1e-3  # and the edits did something


def test_negative_add_scale_subtracts(lens, x):
    m = torch.randn(D, D, generator=torch.Generator().manual_seed(1))
    both = lens.run(x, edits=[wl.Add(0, 0, 5, matrix=m), wl.Add(0, 0, 5, matrix=m, scale=-1.0)]).logits
    assert (both - lens.run(x).logits).abs().max() < 1e-4


def test_a_single_edit_need_not_be_wrapped(lens, x):
    e = wl.Delete(0, 1, 4)
    assert torch.equal(lens.run(x, edits=e).logits, lens.run(x, edits=[e]).logits)
    assert torch.equal(lens.generate(x, edits=e, max_new_tokens=2).sequences,
                       lens.generate(x, edits=[e], max_new_tokens=2).sequences)
    assert torch.equal(lens.run(x, edits=None).logits, lens.run(x).logits)
    assert torch.equal(lens.run(x, edits=(d for d in [e])).logits, lens.run(x, edits=[e]).logits)
    with pytest.raises(errors.EditShapeError, match="not a list of edits"):
        lens.run(x, edits="Delete(0, 1, 4)")
    with pytest.raises(errors.EditShapeError, match="not a writelens edit"):
        lens.run(x, edits=[(0, 1, 4)])


def _mask(x, row=0, n=3):
    mask = torch.ones_like(x)
    mask[row, :n] = 0
    return mask


def test_an_edit_at_a_padded_position_is_an_error(lens, x):
    mask = _mask(x)
    with pytest.raises(errors.PositionOutOfRangeError, match="position 1 of row 0 edits a padded position"):
        lens.run(x, edits=[wl.Delete(0, 0, 1)], attention_mask=mask)
    with pytest.raises(errors.PositionOutOfRangeError, match="padded"):
        lens.run(x, edits=[wl.Install(0, 0, (2, 3), value=ONE, batch=0)], attention_mask=mask)
    out = lens.run(x, edits=[wl.Delete(0, 0, 1, batch=1), wl.Delete(0, 0, 3)], attention_mask=mask)
    assert torch.isfinite(out.logits).all()  # row 1 is real at 1; both rows are real at 3


BAD_MASKS = [
    (lambda x: torch.ones(2, 11, dtype=torch.long), "shape \\(2, 11\\) but input_ids \\(2, 12\\)"),
    (lambda x: torch.ones(12, dtype=torch.long), "shape \\(12,\\)"),
    (lambda x: torch.zeros_like(x), "row 0 is all zeros"),
    (lambda x: _mask(x, row=1, n=12), "row 1 is all zeros"),
    (lambda x: torch.full_like(x, 2), "only 0 and 1"),
    (lambda x: "all", "must be a \\[B, T\\] tensor"),
]


@pytest.mark.parametrize("make, match", BAD_MASKS, ids=[c[1] for c in BAD_MASKS])
def test_bad_attention_mask(lens, x, make, match):
    with pytest.raises(errors.InputError, match=match):
        lens.run(x, attention_mask=make(x))


def test_good_masks_are_accepted(lens, x):
    bool_mask = _mask(x).bool()
    a = lens.run(x, attention_mask=bool_mask).logits
    assert torch.equal(a, lens.run(x, attention_mask=_mask(x)).logits)
    one = x[:1, 3:]
    assert torch.equal(lens.run(one, attention_mask=torch.ones(9, dtype=torch.long)).logits,
                       lens.run(one, attention_mask=torch.ones(1, 9, dtype=torch.long)).logits)


# ---- item 3: inputs ---------------------------------------------------------------------------------------------

BAD_IDS = [
    (torch.zeros(1, 0, dtype=torch.long), "empty batch or sequence"),
    (torch.zeros(0, 5, dtype=torch.long), "empty batch or sequence"),
    (torch.tensor([[5, -1, 7]]), "input_ids\\[0, 1\\] = -1 is outside the vocabulary \\(valid ids: 0..127\\)"),
    (torch.tensor([[5, 7], [128, 3]]), "input_ids\\[1, 0\\] = 128 is outside the vocabulary"),
    ("In the beginning", "got text; tokenise it first"),
    (["In the", "beginning"], "got text"),
    (torch.rand(1, 5), "integer tensor"),
    (torch.ones(1, 5, dtype=torch.bool), "integer tensor"),
    (torch.ones(1, 2, 5, dtype=torch.long), "shape \\(1, 2, 5\\)"),
    ([[1, 2], [3]], "rows of equal length"),
    (None, "integer tensor"),
]


@pytest.mark.parametrize("bad, match", BAD_IDS, ids=[c[1][:30] for c in BAD_IDS])
def test_bad_input_ids(lens, bad, match):
    with pytest.raises(errors.InputError, match=match):
        lens.run(bad)
    with pytest.raises(errors.InputError, match=match):
        lens.generate(bad, max_new_tokens=1)


def test_ids_as_lists_and_small_int_dtypes_are_accepted(lens, x):
    ref = lens.run(x).logits
    assert torch.equal(lens.run(x.tolist()).logits, ref)
    assert torch.equal(lens.run(x.int()).logits, ref)
    assert torch.allclose(lens.run(x[0]).logits, ref[:1], atol=1e-5)  # a [T] input is one row


BAD_GENERATE = [
    (dict(max_new_tokens=0), "max_new_tokens=0: generate at least 1 token"),
    (dict(max_new_tokens=-3), "max_new_tokens=-3"),
    (dict(max_new_tokens=2.5), "max_new_tokens must be an integer"),
    (dict(do_sample=True, top_k=129), "top_k=129 is outside 1..128"),
    (dict(do_sample=True, top_k=0), "top_k=0 is outside"),
    (dict(top_k=1000), "top_k=1000"),
    (dict(do_sample=True, temperature=0.0), "temperature=0.0 must be a finite number > 0"),
    (dict(do_sample=True, temperature=-1.0), "temperature=-1.0"),
    (dict(do_sample=True, temperature=float("nan")), "temperature=nan"),
    (dict(do_sample=True, seed=1.5), "seed must be an integer"),
]


@pytest.mark.parametrize("kwargs, match", BAD_GENERATE, ids=[c[1][:30] for c in BAD_GENERATE])
def test_bad_generation_arguments(lens, x, kwargs, match):
    with pytest.raises(errors.InputError, match=match):
        lens.generate(x, **{"max_new_tokens": 2, **kwargs})


def test_top_k_equal_to_the_vocabulary_samples_from_everything(lens, x):
    a = lens.generate(x, max_new_tokens=3, do_sample=True, top_k=128, seed=0).sequences
    b = lens.generate(x, max_new_tokens=3, do_sample=True, seed=0).sequences
    assert torch.equal(a, b)


def test_trace_checks_its_ids(lens):
    with pytest.raises(errors.InputError, match="outside the vocabulary"):
        lens.trace(torch.tensor([[3, 500]]))
    with pytest.raises(errors.InputError, match="empty"):
        lens.trace(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(errors.MissingTokenizerError, match="lens.trace with text"):
        lens.trace("w3 w4")


@pytest.mark.parametrize("family", ["mamba2", "gdn-tiny"])
def test_vocabulary_bound_on_other_models(family):
    """The id check uses each model's own input embedding (Mamba-2 and the shipped gdn-tiny)."""
    if family == "mamba2":
        lens = wl.WriteLens(mamba2(1, 16))
    else:
        model, tok = wl.zoo.load("gdn-tiny")
        lens = wl.WriteLens(model, tokenizer=tok)
    vocab = lens.vocab_size
    assert vocab == lens.model.get_input_embeddings().num_embeddings
    with pytest.raises(errors.InputError, match=f"= {vocab} is outside the vocabulary \\(valid ids: 0..{vocab - 1}\\)"):
        lens.run(torch.tensor([[3, vocab]]))
    assert lens.run(torch.tensor([[3, vocab - 1]])).logits.shape[:2] == (1, 2)


# ---- item 5 (non-SAE): loading, devices, output folders --------------------------------------------------------


def test_from_pretrained_of_a_missing_path(tmp_path):
    with pytest.raises(errors.ModelLoadError, match="the path does not exist"):
        wl.WriteLens.from_pretrained(str(tmp_path / "no-such-model"))
    with pytest.raises(errors.ModelLoadError, match="does not exist"):
        wl.WriteLens.from_pretrained("./no/such/model")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(errors.ModelLoadError, match="is a file"):
        wl.WriteLens.from_pretrained(str(tmp_path / "weights.bin"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(errors.ModelLoadError, match="has no config.json"):
        wl.WriteLens.from_pretrained(str(empty))
    with pytest.raises(errors.ModelLoadError, match="neither a local model folder nor a reachable hub id"):
        wl.WriteLens.from_pretrained("writelens-no-such-org/no-such-model", local_files_only=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")
def test_cuda_without_cuda():
    with pytest.raises(errors.DeviceUnavailableError, match="needs CUDA"):
        check_device("cuda")
    with pytest.raises(errors.DeviceUnavailableError, match="device_map='cuda:0' needs CUDA"):
        wl.WriteLens.from_pretrained(str(wl.zoo.path("gdn-tiny")), device_map="cuda:0")


def test_device_strings():
    assert check_device("cpu") == "cpu"
    with pytest.raises(errors.DeviceUnavailableError, match="is not a device"):
        check_device("gpu0")
    with pytest.raises(errors.DeviceUnavailableError, match="is not a device"):
        check_device(3.5)


def test_out_dir_checks(tmp_path):
    assert check_out_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()  # nothing is created
    (tmp_path / "f").write_text("x")
    with pytest.raises(errors.OutputDirError, match="is a file"):
        check_out_dir(tmp_path / "f")
    with pytest.raises(errors.OutputDirError, match="lies under the file"):
        check_out_dir(tmp_path / "f" / "sub")
    with pytest.raises(errors.OutputDirError, match="not writable"):
        check_out_dir("/proc/writelens-out")  # /proc refuses new files, even to root
    assert not list(tmp_path.glob(".writelens-probe-*"))


@pytest.mark.skipif(getattr(__import__("os"), "geteuid", lambda: 1)() == 0, reason="root ignores permission bits")
def test_read_only_out_dir(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(errors.OutputDirError, match="read-only"):
            check_out_dir(ro / "out")
    finally:
        ro.chmod(0o755)
