"""The hostile sweep (issue: hardening, last item), Python API part 1: edits, run / generate inputs, the write cache,
sites and SAE modules. One line per bad input: the named error and a fragment of its message. Part 2 (training,
files, extraction, experiments, zoo, tasks) is test_hardening_sweep2.py; the CLI's cases are
test_hardening_sweep_cli.py. Cases of the first sweep stay in test_hardening*.py."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from models import ids, qwen35

import writelens as wl
from writelens import errors as E
from writelens.sae import BilinearSAE, SparseCodes

D = 16  # the tiny Qwen3.5: layers 0-2 Gated DeltaNet (2 value heads of 16 x 16), layer 3 full attention
ONE = torch.ones(D)
NAN = torch.ones(D).index_fill(0, torch.tensor([3]), float("nan"))
INF = torch.ones(D).index_fill(0, torch.tensor([0]), float("inf"))


@pytest.fixture(scope="module")
def c():
    lens = wl.WriteLens(qwen35(layers=4, hk=1, hv=2))
    x = ids(2, 12, seed=1)
    return SimpleNamespace(lens=lens, x=x, cache=lens.run(x, cache=True).cache,
                           run=lambda *e, **k: lens.run(x, edits=list(e), **k))


def _sae(**kw):
    return BilinearSAE(d_k=8, d_v=8, n_features=16, k=2, seed=0, **kw)


def _stacked():
    return BilinearSAE(d_k=8, d_v=8, n_features=16, k=2, seed=0, n_heads=2)


CASES = [
    # ---- edits: sites, positions and rows checked against the run
    ("edit at a full-attention layer", lambda c: c.run(wl.Delete(3, 0, 2)), E.NotRecurrentLayerError, "not a recurrent layer"),
    ("edit head out of range", lambda c: c.run(wl.Delete(0, 2, 2)), E.SiteOutOfRangeError, "outside layer 0's 2 value heads"),
    ("edit layer beyond the model", lambda c: c.run(wl.Delete(9, 0, 2)), E.SiteOutOfRangeError, "outside the model's 4 layers"),
    ("edit pos == T", lambda c: c.run(wl.Delete(0, 0, 12)), E.PositionOutOfRangeError, "valid: 0..11"),
    ("edit batch row == B", lambda c: c.run(wl.Delete(0, 0, 2, batch=2)), E.BatchRowOutOfRangeError, "2 rows"),
    ("edit batch list out of range", lambda c: c.run(wl.Delete(0, 0, 2, batch=[0, 5])), E.BatchRowOutOfRangeError, "row 5"),
    ("Install position >= T", lambda c: c.run(wl.Install(0, 0, (11, 12), value=ONE)), E.PositionOutOfRangeError, "position 12"),
    ("Install next_query at the last position", lambda c: c.run(wl.Install(0, 0, (11,), value=ONE, key_side="next_query")),
     E.EditConflictError, "use key_side='key'"),
    ("generate: edit beyond the generated tokens", lambda c: c.lens.generate(c.x, edits=[wl.Delete(0, 0, 14)], max_new_tokens=2),
     E.PositionOutOfRangeError, "valid: 0..13"),
    # ---- edits: vector / matrix shapes and values
    ("Replace key of wrong length", lambda c: c.run(wl.Replace(0, 0, 2, key=torch.ones(15), value=ONE)), E.EditShapeError, "length 15"),
    ("Replace value of wrong length", lambda c: c.run(wl.Replace(0, 0, 2, key=ONE, value=torch.ones(17))), E.EditShapeError, "(d_v)"),
    ("Add matrix of wrong shape", lambda c: c.run(wl.Add(0, 0, 2, matrix=torch.ones(16, 15))), E.EditShapeError, "(16, 16) state"),
    ("Add matrix 3-D", lambda c: wl.Add(0, 0, 2, matrix=torch.ones(16, 16, 1)), E.EditShapeError, "(d_k, d_v) matrix"),
    ("Add key of wrong length", lambda c: c.run(wl.Add(0, 0, 2, key=torch.ones(3), value=ONE)), E.EditShapeError, "length 3"),
    ("Install value of wrong length", lambda c: c.run(wl.Install(0, 0, (2,), value=torch.ones(5))), E.EditShapeError, "length 5"),
    ("Install key of wrong length", lambda c: c.run(wl.Install(0, 0, (2,), value=ONE, key=torch.ones(5))), E.EditShapeError, "(d_k)"),
    ("Replace key 2-D", lambda c: wl.Replace(0, 0, 2, key=torch.ones(1, 16), value=ONE), E.EditShapeError, "1-D vector"),
    ("Replace key of integers", lambda c: wl.Replace(0, 0, 2, key=torch.ones(16, dtype=torch.long), value=ONE), E.EditShapeError, "floating-point"),
    ("Replace key complex", lambda c: wl.Replace(0, 0, 2, key=torch.ones(16, dtype=torch.complex64), value=ONE), E.EditShapeError, "complex64"),
    ("Replace key NaN", lambda c: wl.Replace(0, 0, 2, key=NAN, value=ONE), E.EditShapeError, "Replace.key holds NaN or inf"),
    ("Replace value inf", lambda c: wl.Replace(0, 0, 2, key=ONE, value=INF), E.EditShapeError, "Replace.value holds NaN"),
    ("Add matrix NaN", lambda c: wl.Add(0, 0, 2, matrix=torch.full((16, 16), float("nan"))), E.EditShapeError, "Add.matrix holds NaN"),
    ("Add key inf", lambda c: wl.Add(0, 0, 2, key=INF, value=ONE), E.EditShapeError, "Add.key holds NaN or inf"),
    ("Install value NaN", lambda c: wl.Install(0, 0, (2,), value=NAN), E.EditShapeError, "Install.value holds NaN"),
    ("Install key NaN", lambda c: wl.Install(0, 0, (2,), value=ONE, key=NAN), E.EditShapeError, "Install.key holds NaN"),
    ("Replace key a string", lambda c: wl.Replace(0, 0, 2, key="abc", value=ONE), E.EditShapeError, "got the string 'abc'"),
    ("Replace without key", lambda c: wl.Replace(0, 0, 2, value=ONE), E.EditShapeError, "needs both key="),
    ("Install magnitude a string", lambda c: wl.Install(0, 0, (2,), value=ONE, magnitude="3"), E.EditShapeError, "got the string '3'"),
    ("Add scale a string", lambda c: wl.Add(0, 0, 2, matrix=torch.ones(16, 16), scale="2"), E.EditShapeError, "Add.scale must be a number"),
    ("Delete timing unknown", lambda c: wl.Delete(0, 0, 2, timing="before"), E.EditShapeError, "'with_read', 'after_read'"),
    ("Install key_side unknown", lambda c: wl.Install(0, 0, (2,), value=ONE, key_side="query"), E.EditShapeError, "'next_query'"),
    ("RandomAtom replace a string", lambda c: wl.RandomAtom(0, 0, 2, replace="yes"), E.EditShapeError, "True or False"),
    ("batch= a 2-D tensor", lambda c: wl.Delete(0, 0, 2, batch=torch.tensor([[0]])), E.EditShapeError, "batch has shape (1, 1)"),
    # ---- edits= containers
    ("edits list holding None", lambda c: c.lens.run(c.x, edits=[None]), E.EditShapeError, "None is not a writelens edit"),
    ("edits nested list", lambda c: c.lens.run(c.x, edits=[[wl.Delete(0, 0, 2)]]), E.EditShapeError, "is not a writelens edit"),
    ("edits an int", lambda c: c.lens.run(c.x, edits=42), E.EditShapeError, "not a list of edits"),
    ("edits holding the class", lambda c: c.lens.run(c.x, edits=[wl.Delete]), E.EditShapeError, "not a writelens edit"),
    # ---- input_ids / attention_mask / sites / generate
    ("input_ids 0-D", lambda c: c.lens.run(torch.tensor(5)), E.InputError, "got shape ()"),
    ("input_ids 4-D", lambda c: c.lens.run(torch.ones(1, 1, 2, 3, dtype=torch.long)), E.InputError, "(1, 1, 2, 3)"),
    ("input_ids an empty list", lambda c: c.lens.run([]), E.InputError, "shape (1, 0)"),
    ("input_ids complex", lambda c: c.lens.run(torch.ones(1, 3, dtype=torch.complex64)), E.InputError, "complex64"),
    ("input_ids a dict", lambda c: c.lens.run({"input_ids": c.x}), E.InputError, "got dict"),
    ("input_ids floats in lists", lambda c: c.lens.run([[1.0, 2.0]]), E.InputError, "dtype torch.float32"),
    ("attention_mask of 0.5", lambda c: c.lens.run(c.x, attention_mask=torch.full((2, 12), 0.5)), E.InputError, "only 0 and 1"),
    ("attention_mask NaN", lambda c: c.lens.run(c.x, attention_mask=torch.full((2, 12), float("nan"))), E.InputError, "only 0 and 1"),
    ("attention_mask complex", lambda c: c.lens.run(c.x, attention_mask=torch.ones(2, 12, dtype=torch.complex64)), E.InputError, "complex64"),
    ("attention_mask 3-D", lambda c: c.lens.run(c.x, attention_mask=torch.ones(2, 12, 1, dtype=torch.long)), E.InputError, "(2, 12, 1)"),
    ("sites= a full-attention layer", lambda c: c.lens.run(c.x, cache=True, sites=[(3, 0)]), E.NotRecurrentLayerError, "choose one of [0, 1, 2]"),
    ("sites= head out of range", lambda c: c.lens.run(c.x, cache=True, sites=[(0, 5)]), E.SiteOutOfRangeError, "head 5"),
    ("sites= a string item", lambda c: c.lens.run(c.x, cache=True, sites=["0:0"]), E.InputError, "(layer, head) pair"),
    ("sites= a float item", lambda c: c.lens.run(c.x, cache=True, sites=[0.5]), E.SiteOutOfRangeError, "layer must be an integer"),
    ("sites= a triple", lambda c: c.lens.run(c.x, cache=True, sites=[(0, 0, 0)]), E.InputError, "(layer, head) pair"),
    ("sites= a bare string", lambda c: c.lens.run(c.x, cache=True, sites="all"), E.InputError, "not a list of sites"),
    ("generate past_key_values a string", lambda c: c.lens.generate(c.x, max_new_tokens=1, past_key_values="junk"),
     E.InputError, "not a transformers cache"),
    ("generate do_sample a string", lambda c: c.lens.generate(c.x, max_new_tokens=1, do_sample="no"), E.InputError, "do_sample must be True or False"),
    ("generate temperature a string", lambda c: c.lens.generate(c.x, max_new_tokens=1, do_sample=True, temperature="hot"), E.InputError, "temperature='hot'"),
    ("generate temperature inf", lambda c: c.lens.generate(c.x, max_new_tokens=1, do_sample=True, temperature=float("inf")), E.InputError, "finite number > 0"),
    ("generate max_new_tokens 1e400", lambda c: c.lens.generate(c.x, max_new_tokens=1e400), E.InputError, "must be an integer"),
    ("lens.site head a float", lambda c: c.lens.site(0, 1.5), E.SiteOutOfRangeError, "head must be an integer"),
    ("lens.site layer a string", lambda c: c.lens.site("0", 0), E.SiteOutOfRangeError, "layer must be an integer"),
    ("lens.site full attention", lambda c: c.lens.site(3, 0), E.NotRecurrentLayerError, "holds no matrix state"),
    ("WriteLens(None)", lambda c: wl.WriteLens(None), E.UnsupportedModelError, "no adapter for NoneType"),
    ("WriteLens of a name", lambda c: wl.WriteLens("gdn-tiny"), E.UnsupportedModelError, "no adapter for str"),
    ("from_pretrained dtype int64", lambda c: wl.WriteLens.from_pretrained(str(wl.zoo.path("gdn-tiny")), dtype=torch.int64),
     E.InputError, "not a floating-point torch dtype"),
    ("from_pretrained dtype misspelt", lambda c: wl.WriteLens.from_pretrained(str(wl.zoo.path("gdn-tiny")), dtype="float17"),
     E.InputError, "'float17'"),
    ("from_pretrained device_map tpu", lambda c: wl.WriteLens.from_pretrained(str(wl.zoo.path("gdn-tiny")), device_map="tpu"),
     E.DeviceUnavailableError, "is not a device"),
    # ---- the write cache
    ("cache.state pos a float", lambda c: c.cache.state(0, 0, 1.5), E.PositionOutOfRangeError, "position must be an integer"),
    ("cache.state pos a string", lambda c: c.cache.state(0, 0, "3"), E.PositionOutOfRangeError, "got '3'"),
    ("cache.state pos a float tensor", lambda c: c.cache.state(0, 0, torch.tensor([1.5, 2.0])), E.PositionOutOfRangeError, "dtype torch.float32"),
    ("cache.state pos 2-D", lambda c: c.cache.state(0, 0, torch.tensor([[1], [2]])), E.PositionOutOfRangeError, "shape (2, 1)"),
    ("cache.states no positions", lambda c: c.cache.states(0, 0, []), E.PositionOutOfRangeError, "positions is empty"),
    ("cache.layer_states no positions", lambda c: c.cache.layer_states(0, []), E.PositionOutOfRangeError, "positions is empty"),
    ("cache.states a position out of range", lambda c: c.cache.states(0, 0, [1, 40]), E.PositionOutOfRangeError, "position 40"),
    ("cache.write head a float", lambda c: c.cache.write(0, 0.5), E.SiteOutOfRangeError, "head must be an integer"),
    ("cache.write layer a string", lambda c: c.cache.write("0", 0), E.SiteOutOfRangeError, "layer must be an integer"),
    ("cache.write_matrix pos == T", lambda c: c.cache.write_matrix(0, 0, 12), E.PositionOutOfRangeError, "valid: 0..11"),
    # ---- SAE configs and modules
    ("SAEConfig n_features 0", lambda c: _sae().cfg.replace(n_features=0), E.SAEConfigError, "n_features must be a positive int"),
    ("SAEConfig k 0", lambda c: BilinearSAE(d_k=8, d_v=8, n_features=16, k=0), E.SAEConfigError, "k must be a positive int"),
    ("SAEConfig k > n_features", lambda c: BilinearSAE(d_k=8, d_v=8, n_features=16, k=17), E.SAEConfigError, "widen the dictionary"),
    ("SAEConfig rank 0", lambda c: _sae(rank=0), E.SAEConfigError, "rank must be a positive int"),
    ("SAEConfig rank > d", lambda c: _sae(rank=9), E.SAEConfigError, "exceeds min(d_k, d_v)=8"),
    ("SAEConfig d_k a float", lambda c: BilinearSAE(d_k=8.0, d_v=8, n_features=16, k=2), E.SAEConfigError, "d_k must be a positive int"),
    ("SAEConfig jumprelu_bandwidth NaN", lambda c: _sae(activation="jumprelu", jumprelu_bandwidth=float("nan")), E.SAEConfigError, "finite number"),
    ("SAEConfig jumprelu threshold a string", lambda c: _sae(jumprelu_init_threshold="x"), E.SAEConfigError, "got 'x'"),
    ("SAEConfig jumprelu threshold inf", lambda c: _sae(activation="jumprelu", jumprelu_init_threshold=float("inf")), E.SAEConfigError, "finite"),
    ("SAEConfig activation in capitals", lambda c: _sae(activation="TopK"), E.SAEConfigError, "'TopK' is unknown"),
    ("SAEConfig tied 'no'", lambda c: _sae(tied="no"), E.SAEConfigError, "tied must be True or False"),
    ("SAEConfig center 'False'", lambda c: _sae(center="False"), E.SAEConfigError, "center must be True or False"),
    ("SAEConfig n_heads True", lambda c: _sae(n_heads=True), E.SAEConfigError, "n_heads must be None or a positive int"),
    ("SAEConfig metadata a string", lambda c: _sae(metadata="L4H1"), E.SAEConfigError, "metadata must be a dict"),
    ("SAEConfig architecture unknown", lambda c: wl.sae.build_sae(_sae().cfg.replace(architecture="conv")), E.SAEConfigError, "unknown SAE architecture 'conv'"),
    ("SAEConfig batchtopk decay NaN", lambda c: _sae(batchtopk_threshold_decay=float("nan")), E.SAEConfigError, "finite number"),
    ("encode wrong trailing shape", lambda c: _sae().encode(torch.zeros(3, 8, 9)), E.SAEInputError, "got (3, 8, 9)"),
    ("encode complex states", lambda c: _sae().encode(torch.zeros(2, 8, 8, dtype=torch.complex64)), E.SAEInputError, "real-valued"),
    ("encode bool states", lambda c: _sae().encode(torch.zeros(2, 8, 8, dtype=torch.bool)), E.SAEInputError, "dtype torch.bool"),
    ("encode single states on a stacked SAE", lambda c: _stacked().encode(torch.zeros(3, 8, 8)), E.SAEInputError, "[..., 2, 8, 8]"),
    ("decode codes of wrong width", lambda c: _sae().decode(torch.zeros(2, 15)), E.SAEInputError, "got (2, 15)"),
    ("decode NaN codes", lambda c: _sae().decode(torch.full((2, 16), float("nan"))), E.NonFiniteError, "codes given to decode"),
    ("decode_sparse index >= F", lambda c: _sae().decode_sparse(SparseCodes(torch.ones(2, 2), torch.tensor([[0, 16], [1, 2]]))),
     E.SAEInputError, "must be in [0, 16)"),
    ("decode_sparse negative index", lambda c: _sae().decode_sparse(SparseCodes(torch.ones(2, 2), torch.tensor([[0, -1], [1, 2]]))),
     E.SAEInputError, "got -1..2"),
    ("decode_sparse values / indices differ", lambda c: _sae().decode_sparse(SparseCodes(torch.ones(2, 3), torch.tensor([[0, 1], [1, 2]]))),
     E.SAEInputError, "differ in shape"),
    ("atoms of a float index", lambda c: _sae().atoms([1.5]), E.SAEInputError, "must be integers"),
    ("atoms head out of range", lambda c: _stacked().atoms([0], head=5), E.SAEInputError, "holds 2 head(s)"),
    ("atoms head= on a single SAE", lambda c: _sae().atoms([0], head=1), E.SAEInputError, "takes head=None"),
    ("atoms negative head", lambda c: _stacked().atoms([0], head=-1), E.SAEInputError, "atoms(head=-1)"),
    ("head() out of range", lambda c: _stacked().head(5), E.SAEInputError, "heads 0..1"),
    ("head() negative", lambda c: _stacked().head(-1), E.SAEInputError, "not counted from the end"),
    ("SAE.stack of nothing", lambda c: BilinearSAE.stack([]), E.SAEInputError, "non-empty list"),
    ("set_mean of wrong shape", lambda c: _sae(center=True).set_mean(torch.ones(8)), E.SAEInputError, "not broadcast"),
    ("set_mean NaN", lambda c: _sae(center=True).set_mean(torch.full((8, 8), float("nan"))), E.SAEInputError, "finite: False"),
]


@pytest.mark.parametrize("make, error, match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_its_named_error(c, make, error, match):
    with pytest.raises(error) as info:
        make(c)
    assert match in str(info.value), str(info.value)


def test_accepted_inputs_behave_as_documented(c):
    """What the sweep found acceptable: normalised, not refused."""
    sae = _sae()
    states = torch.randn(2, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sae.encode(states.numpy()), sae.encode(states))  # arrays / lists become tensors
    assert torch.equal(sae.encode(states.tolist()), sae.encode(states))
    assert sae.encode(torch.zeros(0, 8, 8)).shape == (0, 16)  # an empty batch encodes to no rows
    k = BilinearSAE(d_k=8, d_v=8, n_features=16, k=np.int64(2)).cfg.k
    assert k == 2 and type(k) is int  # numpy integers are normalised (and serialise to JSON)
    assert c.cache.states(0, 0, torch.tensor([3, 5])).shape == (2, 2, 16, 16)  # positions as a tensor
    assert torch.equal(c.cache.state(0, 0, np.int64(3)), c.cache.state(0, 0, 3))
