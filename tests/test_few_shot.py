"""Tests for anatomy.experiments.few_shot beyond tests/test_icl.py's: the batched queries compute the LM head
only where a logit is read, and give the very numbers of the full computation."""

import pytest
import torch

from anatomy import Config, Transformer
from anatomy.experiments.few_shot import _batched_queries


def _full(model, context, queries):
    """The straightforward computation: every position through the head, then each query's last one."""
    out = []
    for q in queries:
        cache = model.new_cache(batch_size=1, max_len=len(context) + len(q))
        if context:
            model(torch.tensor([context]), cache=cache)
        out.append(model(torch.tensor([q]), cache=cache)[0, -1])
    return torch.stack(out)


@pytest.mark.parametrize("tie", [False, True])
def test_the_head_on_the_read_rows_only_gives_the_same_logits(tie):
    torch.manual_seed(0)
    config = Config(vocab_size=50, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, tie_embeddings=tie)
    model = Transformer(config).eval()
    context, queries = [1, 2, 3, 4, 5, 6, 7], [[8], [9, 10, 11], [12, 13], [14, 15, 16, 17]]
    with torch.no_grad():
        batched = _batched_queries(model, context, queries)
        # the batched call of the whole head, as before: the last rows of (n, width, vocab), bitwise
        n, width = len(queries), max(map(len, queries))
        cache = model.new_cache(batch_size=n, max_len=len(context) + width)
        single = model.new_cache(batch_size=1, max_len=len(context))
        model(torch.tensor([context]), cache=single)
        for layer in range(single.n_layers):
            cache.update(
                layer, single.keys(layer).expand(n, -1, -1, -1), single.values(layer).expand(n, -1, -1, -1)
            )
        cache.commit(single.tokens.expand(n, -1))
        cache._owner = single._owner
        padded = torch.tensor([q + [q[-1]] * (width - len(q)) for q in queries])
        whole = model(padded, cache=cache)[torch.arange(n), torch.tensor([len(q) - 1 for q in queries])]
        assert torch.equal(batched, whole)
        torch.testing.assert_close(batched, _full(model, context, queries), atol=1e-5, rtol=0)
        torch.testing.assert_close(
            _batched_queries(model, [], queries), _full(model, [], queries), atol=1e-5, rtol=0
        )
