"""The forward pass over many new tokens with oneDNN's matrix products (anatomy.prefill): when a model takes
it, that it computes the textbook path's numbers (logits, cache, greedy tokens), and every way out of it."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import anatomy  # noqa: E402
from anatomy import decode, prefill  # noqa: E402
from anatomy.model import Config, Transformer, to_input_major  # noqa: E402

pytestmark = [
    pytest.mark.skipif(prefill._op() is None, reason="this PyTorch has no oneDNN linear op"),
    pytest.mark.usefixtures("one_thread"),
]


def _model(seed: int = 0, **kw) -> Transformer:
    torch.manual_seed(seed)
    c = dict(vocab_size=97, d_model=64, n_layers=3, n_heads=4, n_kv_heads=2, max_seq_len=128) | kw
    return to_input_major(Transformer(Config(**c))).eval()


def _spy(monkeypatch) -> list:
    """Record whether each call of prefill.forward computed the logits (True) or refused (False)."""
    taken, real = [], prefill.forward

    def spy(*args):
        out = real(*args)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(prefill, "forward", spy)
    return taken


def _prefill(model, ids, keep=0, batch=1):
    with torch.inference_mode():
        cache = model.new_cache(batch_size=batch, max_len=80)
        return model(ids, cache=cache, logits_to_keep=keep), cache


def test_linear_is_the_product_to_rounding():
    g = torch.Generator().manual_seed(0)
    for rows, n_in, n_out in ((512, 576, 960), (50, 1536, 576), (1, 37, 33), (3, 7, 130)):
        x = torch.randn(rows, n_in, generator=g)
        w = torch.randn(n_in, n_out, generator=g).t()  # input-major, as the model stores it
        exact = x.double() @ w.double().T
        bound = n_in * 2.0**-24 * (x.double().abs() @ w.double().abs().T)
        with torch.inference_mode():
            got = prefill._linear(x, w)
        assert got.shape == (rows, n_out) and bool(((got.double() - exact).abs() <= bound).all())
        w[:, 0] = 0  # a wrong product is far outside the bound: the check can fail
        with torch.inference_mode():
            assert not bool(((prefill._linear(x, w).double() - exact).abs() <= bound).all())


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_prefill_equals_the_textbook_path(monkeypatch, seed):
    """A 40-token prompt, then 20 more tokens on the cache (a chat turn): logits and cache agree with the
    textbook path to float32 rounding, and the path was taken for both calls (the test fails without it)."""
    model = _model(seed)
    ids = torch.randint(0, 97, (1, 60), generator=torch.Generator().manual_seed(seed))
    taken = _spy(monkeypatch)
    with torch.inference_mode():
        cache = model.new_cache(max_len=80)
        fast = [model(ids[:, :40], cache=cache), model(ids[:, 40:], cache=cache, logits_to_keep=3)]
        assert taken == [True, True]
        with decode.disabled():
            ref_cache = model.new_cache(max_len=80)
            slow = [
                model(ids[:, :40], cache=ref_cache),
                model(ids[:, 40:], cache=ref_cache, logits_to_keep=3),
            ]
    assert taken == [True, True, False, False]  # under disabled(): the textbook path
    for a, b in zip(fast, slow):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5, rtol=1e-5) and not torch.equal(a, b * 0)
    assert len(cache) == len(ref_cache) == 60 and torch.equal(cache.tokens, ref_cache.tokens)
    for layer in range(3):
        assert torch.allclose(cache.keys(layer), ref_cache.keys(layer), atol=1e-5)
        assert torch.allclose(cache.values(layer), ref_cache.values(layer), atol=1e-5)


def test_a_batch_and_the_kept_logits_equal_the_textbook_path():
    model = _model(2)
    ids = torch.randint(0, 97, (2, 30), generator=torch.Generator().manual_seed(2))
    fast, _ = _prefill(model, ids, keep=1, batch=2)
    with decode.disabled():
        slow, _ = _prefill(model, ids, keep=1, batch=2)
        full, _ = _prefill(model, ids, batch=2)
    assert fast.shape == (2, 1, 97) and torch.allclose(fast, slow, atol=1e-5, rtol=1e-5)
    assert torch.allclose(fast, full[:, -1:], atol=1e-5, rtol=1e-5)


def test_generate_greedy_tokens_equal_the_textbook_path():
    model = _model(3, vocab_size=50)
    ids = torch.randint(0, 50, (1, 25), generator=torch.Generator().manual_seed(3))  # a prompt > MAX_TOKENS
    fast = anatomy.generate(model, ids, 30)
    with decode.disabled():
        assert torch.equal(fast, anatomy.generate(model, ids, 30))


def test_prefill_is_skipped_where_it_does_not_apply(monkeypatch):
    ids = torch.randint(0, 97, (1, decode.MAX_TOKENS + 4))
    base = _model(0)
    with torch.inference_mode():
        assert prefill.forward(base, ids, base.new_cache()) is not None
        for kw in (dict(mlp="gelu"), dict(norm="layer"), dict(qkv_bias=True), dict(mask="bidirectional")):
            m = _model(0, **kw)
            assert prefill.forward(m, ids, m.new_cache()) is None, kw
        m = Transformer(Config(vocab_size=97, d_model=64, n_layers=2, n_heads=4)).eval()  # (out, in) layout
        assert prefill.forward(m, ids, m.new_cache()) is None
        with decode.disabled():
            assert prefill.forward(base, ids, base.new_cache()) is None
        enabled = torch._C._get_mkldnn_enabled()
        torch._C._set_mkldnn_enabled(False)  # what torch.backends.mkldnn.flags(enabled=False) does
        try:
            assert prefill.forward(base, ids, base.new_cache()) is None
        finally:
            torch._C._set_mkldnn_enabled(enabled)
        handle = base.layers[0].mlp.register_forward_hook(lambda *a: None)
        assert prefill.forward(base, ids, base.new_cache()) is None
        handle.remove()
    with torch.enable_grad():
        assert prefill.forward(base, ids, base.new_cache()) is None  # autograd: the textbook path
    taken = _spy(monkeypatch)
    with torch.inference_mode():
        base(ids)  # no cache: the textbook path, not even asked
        base(ids[:, :3], cache=base.new_cache())  # a few tokens: the C step (if a compiler was found)
    assert taken == ([] if decode._library() is not None else [True])


def test_without_onednn_the_textbook_path_runs(monkeypatch):
    model = _model(4)
    ids = torch.randint(0, 97, (1, 30), generator=torch.Generator().manual_seed(4))
    fast, _ = _prefill(model, ids)
    monkeypatch.setattr(prefill, "_op", lambda: None)
    with torch.inference_mode():
        assert prefill.forward(model, ids, model.new_cache()) is None
        assert torch.equal(
            prefill._linear(ids.float()[:, :5], torch.ones(3, 5)),
            F.linear(ids.float()[:, :5], torch.ones(3, 5)),
        )
    slow, _ = _prefill(model, ids)
    with decode.disabled():
        textbook, _ = _prefill(model, ids)
    assert torch.equal(slow, textbook) and torch.allclose(fast, slow, atol=1e-5, rtol=1e-5)


def test_nan_in_the_model_stays_nan():
    model = _model(0)
    with torch.no_grad():
        model.layers[1].mlp.down_proj.weight[5, 7] = float("nan")
    logits, _ = _prefill(model, torch.arange(1, 31)[None])
    assert bool(logits.isnan().all())


# Called by Transformer.forward after its own checks of input_ids and the cache; readers call the model.
BAD_INPUTS_EXEMPT = {"prefill.forward"}


def test_the_head_of_a_few_rows_takes_the_c_product_and_equals_onednn(monkeypatch):
    """logits_to_keep <= MAX_TOKENS: the head runs decode.matmul (when a compiler was found); without a
    compiler, oneDNN's product; both agree with the textbook path."""
    model = _model(6)
    ids = torch.randint(0, 97, (1, 30), generator=torch.Generator().manual_seed(6))
    used, real = [], decode.matmul
    monkeypatch.setattr(decode, "matmul", lambda *a: used.append(1) or real(*a))
    fast, _ = _prefill(model, ids, keep=2)
    assert used == ([1] if decode._library() is not None else [])
    monkeypatch.setattr(decode, "_library", lambda: None)
    no_cc, _ = _prefill(model, ids, keep=2)
    with decode.disabled():
        slow, _ = _prefill(model, ids, keep=2)
    assert torch.allclose(fast, slow, atol=1e-5, rtol=1e-5) and torch.allclose(
        no_cc, slow, atol=1e-5, rtol=1e-5
    )


def test_the_op_check_ignores_torch_defaults():
    """The one-time check of the oneDNN op (and anatomy.fused's) makes float32 CPU tensors whatever the
    default dtype: under float64 defaults it used to fail and switch both paths off for the process."""
    from anatomy import fused  # noqa: PLC0415

    dtype = torch.get_default_dtype()
    prefill._op.cache_clear(), fused._onednn.cache_clear()
    try:
        torch.set_default_dtype(torch.float64)
        assert prefill._op() is not None and fused._onednn() is not None
    finally:
        torch.set_default_dtype(dtype)
        prefill._op.cache_clear(), fused._onednn.cache_clear()


def test_oneDNN_is_used_on_x86_64_only(monkeypatch):
    """On other CPUs (Apple silicon: PyTorch's oneDNN there has no ACL, only generic kernels) the products
    stay MKL's / the platform BLAS's: the speed of oneDNN was measured on x86-64 only."""
    import platform  # noqa: PLC0415

    from anatomy import fused  # noqa: PLC0415

    prefill._op.cache_clear(), fused._onednn.cache_clear()
    try:
        monkeypatch.setattr(platform, "machine", lambda: "arm64")
        assert prefill._op() is None and fused._onednn() is None
    finally:
        monkeypatch.undo()
        prefill._op.cache_clear(), fused._onednn.cache_clear()
    assert prefill._op() is not None and fused._onednn() is not None


@pytest.mark.skipif(prefill._pack_op() is None, reason="oneDNN cannot reorder a linear weight here")
def test_packed_weights_are_kept_and_follow_an_in_place_change():
    """The blocks' matrices in oneDNN's layout are made once per model, reused while no weight changes, and
    made again after an in-place change (the version counter): the logits follow the new weights."""
    import gc  # noqa: PLC0415
    import weakref  # noqa: PLC0415

    model = _model(8)
    ids = torch.randint(0, 97, (1, 30), generator=torch.Generator().manual_seed(8))
    first, _ = _prefill(model, ids)
    kept = prefill._PACKED[model][1]
    assert len(kept) == 3 and all(w.is_mkldnn for layer in kept for w in layer)
    again, _ = _prefill(model, ids)
    assert prefill._PACKED[model][1] is kept and torch.equal(first, again)
    for weight in (model.layers[1].self_attn.k_proj.weight, model.layers[2].mlp.down_proj.weight):
        with torch.no_grad():
            weight.mul_(-1.5)  # in place: the fused q/k/v buffer and the Parameter see it, so must the copy
        fast, _ = _prefill(model, ids)
        with decode.disabled():
            slow, _ = _prefill(model, ids)
        assert prefill._PACKED[model][1] is not kept and torch.allclose(fast, slow, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(fast, first, atol=1e-3)
        kept = prefill._PACKED[model][1]
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None  # the copy does not keep its model alive (and, a weak key, goes with it)


def test_packed_weights_follow_a_fused_optimizer_step():
    """torch's fused AdamW (anatomy.train's optimizer) changes Parameters on the CPU without bumping their
    version counters; the matrices kept in oneDNN's layout must still follow it (they are dropped after any
    optimizer step). Without that, the logits after a step are the old weights' (~0.1-0.6 apart)."""
    model = _model(9)
    ids = torch.randint(0, 97, (1, 30), generator=torch.Generator().manual_seed(9))
    before, _ = _prefill(model, ids)
    assert model in prefill._PACKED
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    model.train()
    F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten()).backward()
    opt.step()
    model.eval()
    fast, _ = _prefill(model, ids)
    with decode.disabled():
        slow, _ = _prefill(model, ids)
    assert not torch.allclose(slow, before, atol=1e-3)  # the step changed the model
    assert torch.allclose(fast, slow, atol=1e-5, rtol=1e-5)


def test_weights_made_in_inference_mode_take_the_plain_weights():
    """Inference tensors have no version counter, so a kept copy could not follow a change: the path uses the
    plain weights for them (before, it raised 'Inference tensors do not track version counter')."""
    with torch.inference_mode():
        model = _model(10)
    ids = torch.randint(0, 97, (1, 40), generator=torch.Generator().manual_seed(10))
    fast, _ = _prefill(model, ids)
    with decode.disabled():
        slow, _ = _prefill(model, ids)
    assert model not in prefill._PACKED
    assert torch.allclose(fast, slow, atol=1e-5, rtol=1e-5)
