"""The one-token decoding step in C (anatomy.decode): its matrix-vector product against float64, the whole
step against the model's textbook path (the same model with the step switched off), and every way out of it
(no compiler, autograd, hooks, other architectures, weights moved or replaced).
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch
import torch.nn as nn

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import anatomy  # noqa: E402
from anatomy import decode, prefill  # noqa: E402
from anatomy.model import Config, Transformer, to_input_major  # noqa: E402
from anatomy.packed import compiled  # noqa: E402

pytestmark = [
    pytest.mark.skipif(
        shutil.which("cc") is None and shutil.which("gcc") is None, reason="needs a C compiler"
    ),
    pytest.mark.usefixtures("one_thread"),
]


def _bound(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The float32 rounding bound of a length-K sum of products, K * 2^-24 * sum_k |x_k w_nk| (per output)."""
    return w.shape[1] * 2.0**-24 * (x.double().abs() @ w.double().abs().T)


@pytest.mark.parametrize(
    "n_in, n_out",
    [(576, 960), (576, 3072), (1536, 576), (576, 4096), (7, 5), (37, 33), (4, 16), (1, 1), (9, 130)],
)
def test_matmul_is_the_product_to_rounding(n_in, n_out):
    """SmolLM2's shapes and shapes that exercise the tails (K not a multiple of 4, N not a multiple of 16):
    within the rounding bound of a float32 sum, and much closer than a wrong product could be."""
    g = torch.Generator().manual_seed(n_in * 1000 + n_out)
    w = torch.randn(n_in, n_out, generator=g).t()  # input-major: memory (in, out)
    x = torch.randn(n_in, generator=g)
    got = decode.matmul(x, w)
    exact = x.double() @ w.double().T
    assert got.shape == (n_out,) and got.dtype == torch.float32
    assert bool(((got.double() - exact).abs() <= _bound(x, w)).all())
    # a product with one weight row dropped is far outside that bound (the check can fail)
    w2 = w.clone()
    w2[:, 0] = 0
    if n_in > 1:
        assert not bool(((decode.matmul(x, w2).double() - exact).abs() <= _bound(x, w)).all())


def test_matmul_nan_stays_in_its_own_output():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(37, 21, generator=g).t()
    x = torch.randn(37, generator=g)
    w_nan = w.clone()
    w_nan[4, 9] = float("nan")  # one weight of output 4
    got = decode.matmul(x, w_nan)
    assert torch.equal(got.isnan(), torch.nn.functional.linear(x, w_nan).isnan())
    assert got.isnan().nonzero().flatten().tolist() == [4]
    x_nan = x.clone()
    x_nan[3] = float("nan")
    assert bool(decode.matmul(x_nan, w).isnan().all())  # every output reads x[3], as in torch
    x_inf = x.clone()
    x_inf[0] = float("inf")
    assert torch.equal(decode.matmul(x_inf, w).isinf(), torch.nn.functional.linear(x_inf, w).isinf())


@pytest.mark.parametrize("rows", [2, 5, 16])
def test_matmul_rows_are_independent(rows):
    """Each row of a several-row product is bit for bit the one-row product (the order of the sums depends on
    neither the other rows nor the column blocking), and NaN in one row stays in that row."""
    g = torch.Generator().manual_seed(rows)
    w = torch.randn(100, 600, generator=g).t()  # 600 columns: two 256-column blocks and a tail
    x = torch.randn(rows, 100, generator=g)
    x[1, 7] = float("nan")
    got = decode.matmul(x, w)
    assert got.shape == (rows, 600)
    for r in range(rows):
        assert (
            torch.equal(
                got[r],
                decode.matmul(x[r], w),
            )
            if r != 1
            else bool(got[r].isnan().all())
        )
    assert not bool(got[[r for r in range(rows) if r != 1]].isnan().any())


@pytest.mark.parametrize(
    "x, w, error, name",
    [
        (torch.ones(4).double(), torch.ones(4, 3).t(), TypeError, "x and weight"),
        (torch.ones(4), torch.ones(3, 4), ValueError, "weight must be input-major"),
        (torch.ones(5), torch.ones(4, 3).t(), ValueError, "x must have"),
        (torch.ones(2, 1, 4), torch.ones(4, 3).t(), ValueError, "x must have shape"),
        ([1.0] * 4, torch.ones(4, 3).t(), TypeError, "x"),
        (torch.ones(4), torch.ones(4), ValueError, "weight"),
        (torch.ones(4, dtype=torch.long), torch.ones(4, 3).t(), TypeError, "x"),
        (torch.ones(4, requires_grad=True), torch.ones(4, 3).t(), ValueError, "must not require grad"),
        (torch.ones(4), torch.ones(4, 3, requires_grad=True).t(), ValueError, "must not require grad"),
    ],
)
def test_matmul_refuses_bad_input_naming_it(x, w, error, name):
    with pytest.raises(error, match=name):
        decode.matmul(x, w)


def _model(seed: int = 0, **kw) -> Transformer:
    torch.manual_seed(seed)
    c = dict(vocab_size=97, d_model=64, n_layers=3, n_heads=4, n_kv_heads=2, max_seq_len=128) | kw
    return to_input_major(Transformer(Config(**c))).eval()


def _textbook(monkeypatch):
    monkeypatch.setattr(decode, "step", lambda *args: None)
    monkeypatch.setattr(prefill, "forward", lambda *args: None)  # nor the oneDNN path (anatomy.prefill)


def _steps(model, ids, n_prompt: int):
    """Logits of each one-token call after a prompt, and the cache."""
    out = []
    with torch.inference_mode():
        cache = model.new_cache(max_len=70)
        model(ids[:, :n_prompt], cache=cache)
        for t in range(n_prompt, ids.shape[1]):
            out.append(model(ids[:, t : t + 1], cache=cache))
    return torch.cat(out, dim=1), cache


@pytest.mark.parametrize("seed", [0, 1, 2, 7])
def test_step_equals_the_textbook_path(monkeypatch, seed):
    """Logits of 46 one-token calls after a 20-token prompt (which takes the textbook path: more than
    MAX_TOKENS), past the cache's first capacity of 64, and the cached keys and values agree with the model's
    own path to float32 rounding; the step actually ran for every one-token call."""
    model = _model(seed)
    ids = torch.randint(0, 97, (1, 66), generator=torch.Generator().manual_seed(seed))
    calls = []
    real = decode.step
    monkeypatch.setattr(decode, "step", lambda *a: calls.append(real(*a)) or calls[-1])
    fast, cache_fast = _steps(model, ids, 20)
    assert [out is None for out in calls] == [True] + [False] * 46 and decode._plan(model) is not None
    _textbook(monkeypatch)
    slow, cache_slow = _steps(model, ids, 20)
    assert fast.shape == slow.shape == (1, 46, 97)
    assert torch.allclose(fast, slow, atol=1e-5, rtol=1e-5)
    assert not torch.equal(fast, torch.zeros_like(fast))
    assert len(cache_fast) == len(cache_slow) == 66 and torch.equal(cache_fast.tokens, cache_slow.tokens)
    for layer in range(3):
        assert torch.allclose(cache_fast.keys(layer), cache_slow.keys(layer), atol=1e-5)
        assert torch.allclose(cache_fast.values(layer), cache_slow.values(layer), atol=1e-5)


def test_several_tokens_at_once_equal_one_at_a_time(monkeypatch):
    """Chunks of 1..MAX_TOKENS new tokens (speculative decoding's verification calls) give bit for bit the
    logits and cache of feeding the tokens one by one, and agree with the textbook path to rounding."""
    model = _model(5)
    ids = torch.randint(0, 97, (1, 40), generator=torch.Generator().manual_seed(5))
    one, cache_one = _steps(model, ids, 1)
    with torch.inference_mode():
        cache = model.new_cache(max_len=70)
        model(ids[:, :1], cache=cache)
        parts, start = [], 1
        for n, keep in ((3, 0), (decode.MAX_TOKENS, 0), (1, 1), (5, 2), (14, 14)):
            parts.append(model(ids[:, start : start + n], cache=cache, logits_to_keep=keep))
            assert parts[-1].shape == (1, keep or n, 97)
            start += n
    assert start == 40 and torch.equal(cache.tokens, cache_one.tokens)
    assert torch.equal(parts[0], one[:, 0:3]) and torch.equal(parts[1], one[:, 3:19])
    assert torch.equal(parts[2], one[:, 19:20]) and torch.equal(parts[3], one[:, 23:25])
    assert torch.equal(parts[4], one[:, 25:39])
    for layer in range(3):
        assert torch.equal(cache.keys(layer), cache_one.keys(layer))
    _textbook(monkeypatch)
    slow, _ = _steps(model, ids, 1)
    assert torch.allclose(one, slow, atol=1e-5, rtol=1e-5)


def test_generate_greedy_tokens_equal_the_textbook_path(monkeypatch):
    model = _model(3, vocab_size=50)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    fast = anatomy.generate(model, ids, 40)
    _textbook(monkeypatch)
    assert torch.equal(fast, anatomy.generate(model, ids, 40))


def test_nan_in_the_model_stays_nan():
    model = _model(0)
    with torch.no_grad():
        model.layers[1].mlp.down_proj.weight[5, 7] = float("nan")
    logits, _ = _steps(model, torch.tensor([[1, 2, 3, 4]]), 3)
    assert bool(logits.isnan().all())  # the residual stream carries it into every logit, as in torch


def test_step_is_skipped_where_it_does_not_apply(monkeypatch):
    ids = torch.tensor([[3]])
    base = _model(0)
    with torch.inference_mode():
        assert decode.step(base, ids, base.new_cache()) is not None
        for kw in (
            dict(mlp="gelu"),
            dict(norm="layer"),
            dict(norm_position="post"),
            dict(pos="learned"),
            dict(qkv_bias=True),
            dict(mask="bidirectional"),
            dict(attn_backend="tiled"),  # applies: one query over the cache is the same for every backend
        ):
            m = _model(0, **kw)
            applies = decode.step(m, ids, m.new_cache()) is not None
            assert applies == ("attn_backend" in kw), kw
        m = Transformer(Config(vocab_size=97, d_model=64, n_layers=2, n_heads=4)).eval()  # (out, in) layout
        assert decode.step(m, ids, m.new_cache()) is None
        more = torch.zeros(1, decode.MAX_TOKENS + 1, dtype=torch.long)
        assert decode.step(base, more, base.new_cache()) is None  # a prompt: the textbook path
        assert decode.step(base, torch.tensor([[3], [4]]), base.new_cache(batch_size=2)) is None
        assert decode.step(base.double(), ids, base.new_cache()) is None
    base = _model(0)
    with torch.enable_grad():
        assert decode.step(base, ids, base.new_cache()) is None  # autograd: the textbook path


def test_a_forward_hook_still_runs(monkeypatch):
    model = _model(0)
    seen = []
    handle = model.layers[1].mlp.register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
    fast = anatomy.generate(model, torch.tensor([[1, 2, 3]]), 5)
    assert len(seen) == 5  # the prompt and four one-token calls, all through the textbook path
    handle.remove()
    assert decode._plan(model) is not None
    _textbook(monkeypatch)
    assert torch.equal(fast, anatomy.generate(model, torch.tensor([[1, 2, 3]]), 5))


def test_replaced_or_moved_weights_are_used(monkeypatch):
    """A plan built for the old weights must not survive a new Linear, a reloaded weight or a bias."""
    model = _model(0)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    _steps(model, ids, 3)  # builds the plan
    model.layers[2].mlp.down_proj = to_input_major(nn.Linear(model.config.d_ff, 64, bias=False))
    o_proj = model.layers[0].self_attn.o_proj
    o_proj.weight.data = (2 * o_proj.weight.detach().t()).contiguous().t()  # new memory, input-major
    fast, _ = _steps(model, ids, 3)
    _textbook(monkeypatch)
    slow, _ = _steps(model, ids, 3)
    assert torch.allclose(fast, slow, atol=1e-5)
    monkeypatch.undo()
    model.layers[1].mlp.down_proj.bias = nn.Parameter(torch.ones(64))
    with torch.inference_mode():
        assert decode.step(model, torch.tensor([[1]]), model.new_cache()) is None


def test_disabled_runs_the_textbook_path():
    model = _model(0)
    with torch.inference_mode():
        with decode.disabled():
            assert decode.step(model, torch.tensor([[1]]), model.new_cache()) is None
        assert decode.step(model, torch.tensor([[1]]), model.new_cache()) is not None


def test_a_call_without_the_head_gets_hidden_states_not_the_step():
    """model(..., _head=False) (what anatomy.train's fused loss asks for) returns the final hidden states,
    with a cache too: the step, which always ends with the head, does not take such a call."""
    model = _model(0)
    ids = torch.tensor([[5, 6, 7]])
    with torch.inference_mode():
        caches = [model.new_cache(), model.new_cache()]
        with decode.disabled():  # the same cache contents for both calls below
            for cache in caches:
                model(ids[:, :2], cache=cache)
            ref = model(ids[:, 2:], cache=caches[1], _head=False)
        hidden = model(ids[:, 2:], cache=caches[0], _head=False)
    assert hidden.shape == (1, 1, model.config.d_model)
    assert torch.equal(hidden, ref)


def test_no_compiler_falls_back(monkeypatch, tmp_path):
    """Without a compiler the library is None and the model runs its textbook path, with the same tokens."""
    model = _model(0)
    ids = torch.tensor([[1, 2, 3]])
    fast = anatomy.generate(model, ids, 6)
    monkeypatch.setattr(decode, "_lib", None)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("ANATOMY_CACHE", str(tmp_path))  # no cached library to find either
    with torch.inference_mode():
        assert decode.step(model, torch.tensor([[1]]), model.new_cache()) is None
    assert decode._lib is False
    with pytest.raises(RuntimeError, match="no C compiler"):
        decode.matmul(torch.ones(4), torch.ones(4, 3).t())
    assert torch.equal(fast, anatomy.generate(model, ids, 6))


BAD_INPUTS = {
    "decode.matmul": (
        lambda **kw: decode.matmul(**{"x": torch.ones(4), "weight": torch.ones(4, 3).t(), **kw}),
        [
            ("x", None, TypeError),
            ("x", torch.ones(5), ValueError),
            ("x", torch.ones(4).double(), TypeError),
            ("x", torch.ones(2, 1, 4), ValueError),
            ("weight", None, TypeError),
            ("weight", torch.ones(3, 4), ValueError),
            ("weight", torch.ones(4), ValueError),
        ],
    ),
    "packed.compiled": (
        lambda **kw: compiled(
            **{"source": "int anatomy_ok(void) { return 1; }", "stem": "bad-input-check", **kw}
        ),
        [
            ("source", None, TypeError),
            ("source", 3, TypeError),
            ("stem", None, TypeError),
            ("stem", "", ValueError),
            ("stem", "a/b", ValueError),
            ("openmp", 1, TypeError),
        ],
    ),
}
# Called by Transformer.forward after its own checks of input_ids and the cache; readers call the model.
BAD_INPUTS_EXEMPT = {"decode.step"}


def _same_as_textbook(monkeypatch, model, ids, n_prompt=3):
    """The step's logits (or the textbook path's, where the step declines) equal the textbook path's."""
    fast, _ = _steps(model, ids, n_prompt)
    with monkeypatch.context() as m:
        _textbook(m)
        slow, _ = _steps(model, ids, n_prompt)
    return torch.allclose(fast, slow, atol=1e-5, rtol=1e-5)


def test_a_replaced_final_norm_head_or_embedding_is_computed_as_replaced(monkeypatch):
    """The kernel computes RMSNorm, a bias-free head and a plain embedding lookup: a model whose final norm,
    head or embedding was swapped for another kind takes the textbook path (an Identity norm made the plan
    fail with AttributeError; a LayerNorm or a head with a bias was computed as the kernel's own)."""
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    for swap in (
        lambda m: setattr(m, "norm", nn.Identity()),
        lambda m: setattr(m, "norm", nn.LayerNorm(64)),
        lambda m: setattr(m, "lm_head", to_input_major(nn.Linear(64, 97))),
        lambda m: setattr(m, "embed_tokens", nn.Embedding(97, 64, max_norm=0.1)),
    ):
        model = _model(0)
        _steps(model, ids, 3)  # builds the plan for the plain model
        swap(model)
        with torch.no_grad():
            for p in model.parameters():  # a LayerNorm's bias or a head's bias that is not zero
                if p.dim() == 1:
                    p.add_(0.5)
        with torch.inference_mode():
            assert decode.step(model, torch.tensor([[1]]), model.new_cache()) is None
        assert _same_as_textbook(monkeypatch, model, ids)


def test_weights_of_another_shape_than_the_config_take_the_textbook_path(monkeypatch):
    """Linears swapped for narrower ones (pruned MLP neurons) while the config keeps d_ff: the kernel would
    read past their memory with the config's sizes, so the step must decline."""
    model = _model(0)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    _steps(model, ids, 3)
    for block in model.layers:
        mlp, f = block.mlp, model.config.d_ff // 2
        mlp.gate_proj, mlp.up_proj = nn.Linear(64, f, bias=False), nn.Linear(64, f, bias=False)
        mlp.down_proj = nn.Linear(f, 64, bias=False)
    to_input_major(model)
    with torch.inference_mode():
        assert decode.step(model, torch.tensor([[1]]), model.new_cache()) is None
    assert _same_as_textbook(monkeypatch, model, ids)
    model = _model(0, tie_embeddings=False)
    _steps(model, ids, 3)  # the plan; the embedding is read on every call, not kept in it
    model.embed_tokens.weight.data = model.embed_tokens.weight.data[:50].clone()  # fewer rows than the vocab
    with torch.inference_mode():
        assert decode.step(model, torch.tensor([[1]]), model.new_cache()) is None


def test_a_changed_norm_eps_is_used(monkeypatch):
    model = _model(0)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    _steps(model, ids, 3)
    for block in model.layers:
        block.input_layernorm.eps = block.post_attention_layernorm.eps = 10.0
    model.norm.eps = 10.0
    with torch.inference_mode():
        assert decode.step(model, torch.tensor([[1]]), model.new_cache()) is not None  # still the step
    assert _same_as_textbook(monkeypatch, model, ids)


def test_a_copied_cache_writes_only_its_own_buffers():
    """copy.deepcopy of a cache the step has used: the copy's step must write the copy's buffers (its table of
    buffer addresses was copied along with the list it was keyed on, and pointed into the original)."""
    import copy

    model = _model(0)
    with torch.inference_mode():
        cache = model.new_cache(max_len=70)
        model(torch.tensor([[1, 2, 3]]), cache=cache)
        model(torch.tensor([[4]]), cache=cache)  # the step builds the cache's table
        twin = copy.deepcopy(cache)
        before = [t.clone() for t in cache._k + cache._v]
        out = model(torch.tensor([[5]]), cache=twin)
    assert all(torch.equal(a, b) for a, b in zip(before, cache._k + cache._v))  # the original is untouched
    assert len(cache) == 4 and len(twin) == 5
    with torch.inference_mode():
        again = model(torch.tensor([[5]]), cache=cache)  # the same token after the same 4: the same logits
    assert torch.equal(out, again)
    for layer in range(3):
        assert torch.equal(twin.keys(layer), cache.keys(layer))


def test_a_dispatch_or_function_mode_sees_the_textbook_path():
    """An op-level mode (a counter, a tracer) would see nothing of the C call: the model takes its textbook
    path under it, and the mode sees the products."""
    from torch.overrides import TorchFunctionMode
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.__name__)
            return func(*args, **(kwargs or {}))

    class Calls(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.names.append(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    model = _model(0)
    with torch.inference_mode():
        cache = model.new_cache()
        model(torch.tensor([[1, 2]]), cache=cache)
        with Ops() as ops:
            model(torch.tensor([[3]]), cache=cache)
        with Calls() as calls:
            model(torch.tensor([[4]]), cache=cache)
        assert decode.step(model, torch.tensor([[5]]), cache) is not None  # outside the modes: the step
    assert any(name.startswith(("linear", "mm", "addmm")) for name in ops.names), ops.names[:20]
    assert "linear" in calls.names, calls.names[:20]


def test_matmul_of_tensors_requiring_grad_runs_without_autograd():
    """What requires grad is refused only where autograd records (a silent result without a gradient
    would be a wrong answer); under no_grad the product is the same as for detached tensors."""
    x, w = torch.randn(4, requires_grad=True), torch.randn(4, 3).t()
    with torch.no_grad():
        assert torch.equal(decode.matmul(x, w), decode.matmul(x.detach(), w))


def test_matmul_of_an_empty_sum_is_zero():
    assert torch.equal(decode.matmul(torch.ones(2, 0), torch.ones(0, 3).t()), torch.zeros(2, 3))


def test_truncated_cache_continues_at_its_length(monkeypatch):
    """After truncate (a rejected draft), the step writes and reads positions from the new length on: the
    logits and cache equal the textbook path's doing the same."""
    model = _model(4)

    def run():
        with torch.inference_mode():
            cache = model.new_cache(max_len=40)
            model(torch.tensor([[1, 2, 3]]), cache=cache)
            model(torch.tensor([[4, 5, 6, 7]]), cache=cache)
            cache.truncate(4)
            out = model(torch.tensor([[8, 9]]), cache=cache)
            return out, model(torch.tensor([[10]]), cache=cache), cache

    fast = run()
    _textbook(monkeypatch)
    slow = run()
    assert torch.allclose(fast[0], slow[0], atol=1e-5) and torch.allclose(fast[1], slow[1], atol=1e-5)
    assert torch.equal(fast[2].tokens, torch.tensor([[1, 2, 3, 4, 8, 9, 10]]))
    for layer in range(3):
        assert torch.allclose(fast[2].keys(layer), slow[2].keys(layer), atol=1e-5)


def test_float64_default_dtype_changes_nothing():
    """torch.set_default_dtype(float64) must not give the kernel float64 buffers to write float32 into."""
    model = _model(0)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    want, _ = _steps(model, ids, 3)
    x, w = torch.randn(3, 37), torch.randn(37, 21).t()
    product = decode.matmul(x, w)
    torch.set_default_dtype(torch.float64)
    try:
        got, _ = _steps(model, ids, 3)
        product64 = decode.matmul(x, w)
    finally:
        torch.set_default_dtype(torch.float32)
    assert got.dtype == torch.float32 and torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    assert product64.dtype == torch.float32 and torch.equal(product64, product)


def test_a_deep_copy_keeps_the_layout_and_the_step():
    """copy.deepcopy of an input-major model is input-major too (the fused groups in one buffer again), so
    the copy decodes with the step, to the same logits; it shares no memory with the original. A model in
    the ordinary layout copies as before."""
    import copy

    model = _model(0)
    twin = copy.deepcopy(model)
    ids = torch.tensor([[4, 5, 6]])
    with torch.inference_mode():
        assert decode.step(twin, ids, twin.new_cache()) is not None
        assert torch.equal(model(ids, cache=model.new_cache()), twin(ids, cache=twin.new_cache()))
    for (name, p), (name2, q) in zip(model.named_parameters(), twin.named_parameters()):
        assert name == name2 and p.stride() == q.stride() and torch.equal(p, q)
        assert p.untyped_storage().data_ptr() != q.untyped_storage().data_ptr()
    assert twin.lm_head.weight is twin.embed_tokens.weight
    plain = Transformer(Config(vocab_size=97, d_model=64, n_layers=1, n_heads=4))
    assert copy.deepcopy(plain).layers[0].self_attn.q_proj.weight.stride() == (64, 1)


def test_a_dropped_model_is_freed_without_the_cycle_collector():
    """The step's plan lives in the model's __dict__ and refers to the model only weakly: a model that has
    decoded is freed as soon as its last reference goes, not when the cyclic collector next runs (it used
    to stay, with all its weights, until then: 540 MB for SmolLM2)."""
    import gc
    import weakref

    model = _model(0)
    with torch.inference_mode():
        cache = model.new_cache()
        model(torch.tensor([[4, 5, 6]]), cache=cache)
        model(torch.tensor([[7]]), cache=cache)
    assert decode._plan(model) is not None and model.__dict__.get("_decode_plan") is not None
    dropped = weakref.ref(model)
    was = gc.isenabled()
    gc.disable()
    try:
        del model, cache
        assert dropped() is None
    finally:
        if was:
            gc.enable()


@pytest.mark.parametrize("name", ["lm_head", "norm", "embed_tokens"])
def test_a_hook_added_after_decoding_on_a_top_level_module_runs(name):
    """A forward hook registered on the head, the final norm or the embedding after the plan was built still
    runs on the next call (the step computes those modules itself, so the plan must not be used then)."""
    model = _model(0)
    with torch.inference_mode():
        cache = model.new_cache()
        model(torch.tensor([[4, 5, 6]]), cache=cache)
        model(torch.tensor([[7]]), cache=cache)  # the C step, with a plan
        assert decode._plan(model) is not None
        seen = []
        handle = getattr(model, name).register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
        model(torch.tensor([[8]]), cache=cache)
        handle.remove()
    assert len(seen) == 1


def test_a_model_that_has_decoded_pickles_and_decodes_the_same():
    """pickle / torch.save of a model after the C step ran: the cached plan (which holds a weak reference)
    is left out, and the loaded model decodes to the same logits."""
    import io

    model = _model(0)
    ids = torch.tensor([[4, 5, 6]])
    with torch.inference_mode():
        cache = model.new_cache()
        model(ids, cache=cache)
        before = model(torch.tensor([[7]]), cache=cache)
    assert "_decode_plan" in model.__dict__
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert "_decode_plan" not in loaded.__dict__ and "_decode_plan" in model.__dict__
    with torch.inference_mode():
        cache = loaded.new_cache()
        loaded(ids, cache=cache)
        assert torch.equal(loaded(torch.tensor([[7]]), cache=cache), before)
    assert decode._plan(loaded) is not None  # the loaded model decodes with the step too
