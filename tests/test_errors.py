"""Every named error of the core is raised where it should be, with a message that says what to do."""

from __future__ import annotations

import pytest
import torch
from models import ids, qwen35
from torch import nn

import writelens as wl
from writelens import errors


@pytest.fixture(scope="module")
def lens():
    return wl.WriteLens(qwen35(layers=4, hk=1, hv=2))


def test_unsupported_model():
    with pytest.raises(errors.UnsupportedModelError, match="Supported families"):
        wl.WriteLens(nn.Linear(3, 3))


def test_layer_not_recurrent(lens):
    with pytest.raises(errors.NotRecurrentLayerError, match="choose one of"):
        lens.run(ids(1, 8), edits=[wl.Delete(3, 0, 2)])


def test_site_out_of_range(lens):
    with pytest.raises(errors.SiteOutOfRangeError, match="layers"):
        lens.site(9, 0)
    with pytest.raises(errors.SiteOutOfRangeError, match="value heads"):
        lens.run(ids(1, 8), edits=[wl.Delete(0, 2, 2)])


def test_position_out_of_range(lens):
    with pytest.raises(errors.PositionOutOfRangeError, match="valid: 0..7"):
        lens.run(ids(1, 8), edits=[wl.Delete(0, 0, 8)])
    out = lens.run(ids(1, 8), cache=True)
    with pytest.raises(errors.PositionOutOfRangeError):
        out.cache.state(0, 0, 8)
    assert out.cache.state(0, 0, -1).shape == (1, 16, 16)


def test_batch_row_out_of_range(lens):
    with pytest.raises(errors.BatchRowOutOfRangeError, match="2 rows"):
        lens.run(ids(2, 8), edits=[wl.Delete(0, 0, 3, batch=2)])


def test_edit_shape_and_dtype(lens):
    with pytest.raises(errors.EditShapeError, match="d_k"):
        lens.run(ids(1, 8), edits=[wl.Replace(0, 0, 3, key=torch.ones(5), value=torch.ones(16))])
    with pytest.raises(errors.EditShapeError, match=r"\(d_k, d_v\)"):
        lens.run(ids(1, 8), edits=[wl.Add(0, 0, 3, matrix=torch.ones(16, 8))])
    with pytest.raises(errors.EditShapeError, match="floating-point"):
        wl.Replace(0, 0, 3, key=torch.ones(16, dtype=torch.long), value=torch.ones(16))
    with pytest.raises(errors.EditShapeError, match="timing"):
        wl.Delete(0, 0, 3, timing="before")
    with pytest.raises(errors.EditShapeError, match="either matrix"):
        wl.Add(0, 0, 3)


def test_non_finite(lens):
    huge = wl.Add(0, 0, 3, matrix=torch.full((16, 16), 3e38), scale=10.0)  # finite, but overflows once scaled
    with pytest.raises(errors.NonFiniteError, match="magnitude"):
        lens.run(ids(1, 8), edits=[huge])


def test_site_not_captured(lens):
    out = lens.run(ids(1, 8), cache=True, sites=[(1, 0)])
    with pytest.raises(errors.SiteNotCapturedError, match="captured"):
        out.cache.write(0, 0)
    assert out.cache.write(1, 1).key.shape == (1, 8, 16)


def test_self_check_detects_a_changed_kernel(monkeypatch):
    """If the kernel's output no longer follows from its arguments as writelens assumes (a changed transformers
    or kernel package), the self-check fails loudly."""
    import sys

    model = qwen35(layers=4, hk=1, hv=2, seed=3)
    lens = wl.WriteLens(model)
    modeling = sys.modules[type(model.model.layers[0].linear_attn).__module__]
    dispatch = modeling.torch_chunk_gated_delta_rule.dispatch
    real = dispatch.torch_impl

    def changed_kernel(*args, **kwargs):
        out, state = real(*args, **kwargs)
        return out * 1.5, state

    monkeypatch.setattr(dispatch, "torch_impl", changed_kernel)
    with pytest.raises(errors.SelfCheckError, match="transformers"):
        lens.self_check()


def test_install_next_query_at_the_last_position(lens):
    with pytest.raises(errors.EditConflictError, match="next"):
        lens.run(ids(1, 8), edits=[wl.Install(0, 0, (7,), value=torch.ones(16), key_side="next_query")])
