"""writelens.extraction.query_metric: the read queries' second moment of a site, from the real HF classes."""

import pytest
import torch
from models import ids, mamba2, qwen35, rwkv7

import writelens as wl
from writelens.errors import InputError
from writelens.extraction import query_metric


@pytest.mark.parametrize("family", ["gdn", "mamba2", "rwkv7"])
def test_query_metric_is_the_normalised_second_moment_of_the_queries(family):
    torch.manual_seed(0)
    model = {"gdn": lambda: qwen35(), "mamba2": lambda: mamba2(1, 8), "rwkv7": rwkv7}[family]()
    lens = wl.WriteLens(model)
    layer = lens.sites[0].layer
    x = ids(3, 20, vocab=model.config.vocab_size)
    metric = query_metric(lens, x, [(layer, 0), (layer, 1)], min_position=4, batch_size=2)
    q = lens.run(x, cache=True).cache
    for h in (0, 1):
        queries = q.write(layer, h).query[:, 4:].reshape(-1, lens.site(layer, h).d_k).double()
        moment = queries.T @ queries
        torch.testing.assert_close(metric.moment[h].double(), moment * queries.shape[1] / moment.trace(),
                                   rtol=1e-5, atol=1e-6)
    assert metric.n_queries == 3 * 16 and metric.source["sites"] == [[layer, 0], [layer, 1]]


def test_query_metric_skips_padding_and_names_bad_input():
    torch.manual_seed(0)
    lens = wl.WriteLens(qwen35())
    x = ids(2, 12)
    mask = torch.ones_like(x)
    mask[1, 8:] = 0
    metric = query_metric(lens, x, (0, 0), attention_mask=mask)
    assert metric.n_queries == 12 + 8
    with pytest.raises(InputError, match="no real position"):
        query_metric(lens, x, (0, 0), min_position=20)
    with pytest.raises(InputError, match="attention_mask"):
        query_metric(lens, x, (0, 0), attention_mask=mask[:, :5])
    with pytest.raises(wl.errors.WriteLensError):
        query_metric(lens, x, (3, 0))  # layer 3 is full attention
