"""Loading paths: from_pretrained on a saved folder, and the text part of the Qwen3.5 VLM class."""

from __future__ import annotations

import torch
from models import ids, qwen35, qwen35_vlm

import writelens as wl


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_from_pretrained_folder(tmp_path):
    model = qwen35(layers=4, hk=1, hv=2)
    model.save_pretrained(tmp_path)
    lens = wl.WriteLens.from_pretrained(str(tmp_path))
    assert type(lens.model).__name__ == "Qwen3_5ForCausalLM"
    assert lens.model.dtype == torch.float32
    x = ids(1, 12)
    with torch.no_grad():
        assert torch.allclose(lens.run(x).logits, model(x).logits, atol=1e-6)
    assert lens.tokenizer is None  # no tokenizer files in the folder: loads without one


def test_conditional_generation_text_part():
    lens = wl.WriteLens(qwen35_vlm())
    assert lens.recurrent_layers == [0, 1, 2]
    x = ids(2, 30)
    out = lens.run(x, cache=True)
    assert out.cache.state(1, 1, 10).shape == (2, 16, 16)
    edits = [wl.Delete(1, 0, 5, batch=0), wl.RandomAtom(2, 1, 9, seed=1, batch=1)]
    fast = lens.run(x, edits=edits).logits
    assert rel(fast, lens.run(x, edits=edits, oracle=True).logits) < 1e-5
    assert rel(fast, out.logits) > 1e-5
    gen = lens.generate(x, edits=edits, max_new_tokens=3)
    ref = lens.generate(x, edits=edits, max_new_tokens=3, oracle=True)
    assert torch.equal(gen.new_tokens, ref.new_tokens)
