"""anatomy.fused: each fused training op against the plain formula, and the training path that uses them."""

import math

import pytest
import torch
import torch.nn.functional as F

from anatomy import Config, Transformer, fused
from anatomy.fused import (
    _GateUpSwiGLUFunction,
    _LinearFunction,
    _OneDNNLinears,
    _rms_norm,
    _swiglu,
    _swiglu_mlp,
    linear_cross_entropy,
)
from anatomy.model import MLP
from anatomy.objectives import train_step_flops
from anatomy.train import next_token_loss, train

# float32 rounding: the fused loss sums per-chunk sums and takes log(softmax) where F.cross_entropy takes
# log_softmax, so values agree to a few ulps of the loss (1e-6 relative) and gradients to 1e-5 of their
# largest entry; a wrong formula (a missing 1/n, a gradient of the wrong row, a lost chunk) is off by O(1).
LOSS_RTOL, GRAD_RTOL = 1e-6, 1e-5


def _reference(hidden, weight, labels, ignore_index=-100):
    logits = hidden @ weight.T
    return F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(), ignore_index=ignore_index)


def _close(a, b, rtol):
    return float((a - b).abs().max()) <= rtol * max(float(b.abs().max()), 1e-30)


def _problem(seed=0, shape=(3, 7), d=16, vocab=50, ignore=(0, 6)):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*shape, d, generator=g).requires_grad_()
    weight = torch.randn(vocab, d, generator=g).requires_grad_()
    labels = torch.randint(0, vocab, shape, generator=g)
    labels[ignore] = -100
    return hidden, weight, labels


@pytest.mark.parametrize("chunk_rows", [1, 4, 5, 21, 1000])
def test_linear_cross_entropy_equals_cross_entropy_and_its_gradients(chunk_rows):
    hidden, weight, labels = _problem()
    ref = _reference(hidden, weight, labels)
    ref_grads = torch.autograd.grad(ref, (hidden, weight))
    loss = linear_cross_entropy(hidden, weight, labels, chunk_rows=chunk_rows)
    grads = torch.autograd.grad(loss, (hidden, weight))
    assert math.isclose(loss.item(), ref.item(), rel_tol=LOSS_RTOL)
    for got, want in zip(grads, ref_grads):
        assert _close(got, want, GRAD_RTOL)
    assert float(grads[0][0, 6].abs().max()) == 0.0  # an ignored row gets no gradient


def test_linear_cross_entropy_gradcheck_float64():
    hidden, weight, labels = _problem(shape=(2, 3), d=4, vocab=7, ignore=(1, 1))
    hidden = hidden.detach().double().requires_grad_()
    weight = weight.detach().double().requires_grad_()
    fn = lambda h, w: linear_cross_entropy(h, w, labels, chunk_rows=2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (hidden, weight))


def test_linear_cross_entropy_scales_by_the_incoming_gradient():
    hidden, weight, labels = _problem()
    ref = torch.autograd.grad(3.5 * _reference(hidden, weight, labels), (hidden, weight))
    got = torch.autograd.grad(3.5 * linear_cross_entropy(hidden, weight, labels), (hidden, weight))
    for a, b in zip(got, ref):
        assert _close(a, b, GRAD_RTOL)


def test_linear_cross_entropy_a_target_far_below_the_rest_keeps_its_exact_loss():
    # p(target) = exp(-200) underflows float32: the loss must still be ~200 nats, as F.cross_entropy says
    hidden = torch.zeros(2, 3)
    hidden[:, 0] = 1.0
    weight = torch.zeros(4, 3)
    weight[0, 0], weight[1, 0] = 200.0, -0.0
    labels = torch.tensor([1, 0])
    got, want = linear_cross_entropy(hidden, weight, labels), _reference(hidden, weight, labels)
    assert math.isfinite(float(got)) and math.isclose(float(got), float(want), rel_tol=LOSS_RTOL)
    assert float(got) > 90


def test_linear_cross_entropy_nan_stays_nan_and_no_target_is_nan():
    hidden, weight, labels = _problem()
    bad = hidden.detach().clone()
    bad[1, 2, 0] = float("nan")  # a row with a target
    assert math.isnan(float(linear_cross_entropy(bad, weight, labels)))
    assert math.isnan(float(_reference(bad, weight, labels)))
    none = torch.full_like(labels, -100)
    assert math.isnan(float(linear_cross_entropy(hidden, weight, none)))
    assert math.isnan(float(_reference(hidden, weight, none)))


@pytest.mark.parametrize(
    "kwargs, exc, name",
    [
        (dict(labels=torch.tensor([[0, 1, 2, 3, 4, 5, 50]] * 3)), ValueError, "labels"),
        (dict(labels=torch.tensor([[0, 1, 2, 3, 4, 5, -1]] * 3)), ValueError, "labels"),
        (dict(labels=torch.zeros(3, 6, dtype=torch.long)), ValueError, "labels"),
        (dict(labels=torch.zeros(3, 7)), TypeError, "labels"),
        (dict(hidden=torch.randn(3, 7, 15)), ValueError, "hidden"),
        (dict(hidden=torch.zeros(3, 7, 16, dtype=torch.long)), TypeError, "hidden"),
        (dict(weight=torch.randn(50, 16, 1)), ValueError, "weight"),
        (dict(chunk_rows=0), ValueError, "chunk_rows"),
        (dict(chunk_rows=2.0), TypeError, "chunk_rows"),
        (dict(ignore_index=None), TypeError, "ignore_index"),
    ],
)
def test_linear_cross_entropy_bad_input_names_the_argument(kwargs, exc, name):
    hidden, weight, labels = _problem()
    args = {**dict(hidden=hidden, weight=weight, labels=labels), **kwargs}
    with pytest.raises(exc, match=name):
        linear_cross_entropy(**args)


def _rms_plain(x, w, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def test_rms_norm_function_gradcheck_float64_and_matches_the_formula():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 8, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(8, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: _rms_norm(a, b, 1e-5), (x, w))
    x32, w32 = x.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    up = torch.randn(2, 3, 8, generator=g)
    want = torch.autograd.grad(_rms_plain(x32, w32), (x32, w32), up)
    got = torch.autograd.grad(_rms_norm(x32, w32, 1e-5), (x32, w32), up)
    assert torch.allclose(_rms_norm(x32, w32, 1e-5), _rms_plain(x32, w32), rtol=1e-6, atol=1e-6)
    for a, b in zip(got, want):
        assert _close(a, b, GRAD_RTOL)


def test_rms_norm_function_nan_stays_nan():
    x = torch.randn(2, 8, requires_grad=True)
    y = _rms_norm(x.detach().clone().index_fill_(1, torch.tensor([3]), float("nan")), torch.ones(8), 1e-5)
    assert bool(y.isnan().all())


def test_swiglu_function_gradcheck_float64_and_is_autograd_of_the_formula_bit_for_bit():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 10, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(_swiglu, (x,))
    x32 = x.detach().float().requires_grad_()
    up = torch.randn(2, 3, 5, generator=g)
    gate, lin = x32.chunk(2, dim=-1)
    plain = F.silu(gate) * lin
    assert torch.equal(_swiglu(x32), plain)
    assert torch.equal(torch.autograd.grad(_swiglu(x32), x32, up)[0], torch.autograd.grad(plain, x32, up)[0])
    nan = x32.detach().clone()
    nan[0, 0, 0] = float("nan")
    assert bool(_swiglu(nan)[0, 0, 0].isnan())


def test_gate_up_swiglu_gradcheck_float64_and_matches_the_fused_matmul_path():
    """Gate and up as two products: the numbers of the one product with the concatenated weight followed by
    _swiglu, for the output and the gradients of x and both weights, to float32 rounding (bit for bit where
    MKL and the vector loops split the work alike, as for the bench's sizes), and gradcheck in float64."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 8, dtype=torch.float64, generator=g, requires_grad=True)
    wg, wu = (torch.randn(6, 8, dtype=torch.float64, generator=g, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(_GateUpSwiGLUFunction.apply, (x, wg, wu))
    x32, wg32, wu32 = (torch.randn(*t.shape, generator=g, requires_grad=True) for t in (x, wg, wu))
    up = torch.randn(2, 3, 6, generator=g)
    got = _GateUpSwiGLUFunction.apply(x32, wg32, wu32)
    want = _swiglu(F.linear(x32, torch.cat([wg32, wu32])))
    assert _close(got, want, 1e-6)
    for a, b in zip(
        torch.autograd.grad(got, (x32, wg32, wu32), up), torch.autograd.grad(want, (x32, wg32, wu32), up)
    ):
        assert _close(a, b, 1e-6)


@pytest.mark.parametrize("mlp_bias", [False, True])
def test_mlp_under_autograd_takes_the_gate_up_op_without_biases(mlp_bias):
    """Llama's bias-free MLP takes _GateUpSwiGLUFunction (else this file tests nothing of it); with biases the
    fused matmul and _SwiGLUFunction. Both give the plain formula's numbers."""
    cfg = Config(vocab_size=40, d_model=16, n_layers=1, n_heads=2, d_ff=24, mlp_bias=mlp_bias)
    torch.manual_seed(6)
    mlp = MLP(cfg)
    x = torch.randn(2, 5, 16, requires_grad=True)
    act = _swiglu_mlp(mlp, x)
    assert type(act.grad_fn).__name__ == (
        "_SwiGLUFunctionBackward" if mlp_bias else "_GateUpSwiGLUFunctionBackward"
    )
    plain = F.silu(mlp.gate_proj(x)) * mlp.up_proj(x)
    assert _close(act, plain, 1e-6)
    params = [x, *mlp.parameters()]
    got = torch.autograd.grad(mlp(x).sum(), params, allow_unused=True)
    want = torch.autograd.grad(mlp.down_proj(plain).sum(), params, allow_unused=True)
    for a, b in zip(got, want):
        assert (a is None) == (b is None) and (a is None or _close(a, b, GRAD_RTOL))


def _tiny(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=40, d_model=16, n_layers=2, n_heads=2, d_ff=24, max_seq_len=16, tie_embeddings=True)
    return Transformer(Config(**{**cfg, **kw}))


def _plain_loss(model, batch):
    x, y = batch
    return F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=-100)


@pytest.mark.parametrize("kw", [dict(), dict(tie_embeddings=False), dict(mask="bidirectional")])
def test_next_token_loss_fused_path_equals_the_plain_loss_and_gradients(kw):
    model = _tiny(**kw)
    x = torch.randint(0, 40, (3, 12))
    y = torch.cat([x[:, 1:], torch.full((3, 1), -100)], dim=1)
    y[0, 3] = -100
    want = _plain_loss(model, (x, y))
    want_grads = torch.autograd.grad(want, list(model.parameters()))
    head = model.lm_head
    loss, n = next_token_loss(model, (x, y))
    assert model.lm_head is head and n == int((y != -100).sum())
    assert "LinearCrossEntropy" in type(loss.grad_fn).__name__  # the fused path ran (else this tests nothing)
    got_grads = torch.autograd.grad(loss, list(model.parameters()))
    assert math.isclose(float(loss), float(want), rel_tol=LOSS_RTOL)
    for a, b in zip(got_grads, want_grads):
        assert _close(a, b, GRAD_RTOL)
    with torch.no_grad():  # evaluation keeps the plain path: the same value bit for bit
        assert float(next_token_loss(model, (x, y))[0]) == float(_plain_loss(model, (x, y)))


def test_next_token_loss_restores_the_head_when_the_model_raises():
    model = _tiny()
    head = model.lm_head
    x = torch.full((1, 4), 99)  # out of the vocabulary: the model raises
    with pytest.raises(ValueError):
        next_token_loss(model, (x, x))
    assert model.lm_head is head


@pytest.mark.parametrize("chunk_rows", [4, 21, None])
def test_linear_cross_entropy_counts_the_plain_paths_flops(chunk_rows):
    # three products (logits, grad of hidden, grad of weight) over every row, however it is chunked
    from torch.utils.flop_counter import FlopCounterMode

    hidden, weight, labels = _problem()
    with FlopCounterMode(display=False) as plain:
        _reference(hidden, weight, labels).backward()
    with FlopCounterMode(display=False) as fused:
        linear_cross_entropy(hidden, weight, labels, chunk_rows=chunk_rows).backward()
    assert fused.get_total_flops() == plain.get_total_flops() > 0


def test_train_step_flops_are_the_plain_paths():
    model = _tiny()
    x = torch.randint(0, 40, (2, 12))
    batch = (x, torch.cat([x[:, 1:], torch.full((2, 1), -100)], dim=1))
    plain = train_step_flops(model, lambda m, b: (_plain_loss(m, b), 1), batch)
    assert train_step_flops(model, next_token_loss, batch) == plain


def test_train_with_the_fused_path_is_deterministic_and_learns():
    data = torch.randint(0, 40, (4, 12))
    batches = [(data, torch.cat([data[:, 1:], torch.full((4, 1), -100)], dim=1))] * 30
    runs = [train(_tiny(seed=3), batches, steps=30, lr=1e-2, progress=False).loss for _ in range(2)]
    assert runs[0] == runs[1]
    assert runs[0][-1] < 0.8 * runs[0][0]


def _lce_call(**override):
    hidden, weight, labels = _problem()
    return linear_cross_entropy(**{**dict(hidden=hidden, weight=weight, labels=labels), **override})


# Rows for tests/test_bad_inputs.py (its coverage test needs every public function of anatomy.fused).
BAD_INPUTS = {
    "fused.linear_cross_entropy": (
        _lce_call,
        [
            ("hidden", None, TypeError),
            ("hidden", torch.randn(3, 7, 15), ValueError),
            ("weight", "w", TypeError),
            ("weight", torch.randn(50, 16, 1), ValueError),
            ("labels", torch.zeros(3, 7), TypeError),
            ("labels", torch.full((3, 7), 50), ValueError),
            ("labels", torch.zeros(3, 6, dtype=torch.long), ValueError),
            ("ignore_index", 1.5, TypeError),
            ("chunk_rows", 0, ValueError),
            ("chunk_rows", 2.0, TypeError),
        ],
    ),
}


def test_next_token_loss_a_hooked_model_keeps_the_plain_path():
    model = _tiny()
    x = torch.randint(0, 40, (2, 8))
    seen = []
    model.register_forward_hook(lambda m, args, out: seen.append(out.shape[-1]))
    next_token_loss(model, (x, x))
    assert seen == [40]  # the hook saw logits (vocab 40), not hidden states (d_model 16)


def test_linear_cross_entropy_refuses_a_second_derivative():
    hidden, weight, labels = _problem()
    (g,) = torch.autograd.grad(linear_cross_entropy(hidden, weight, labels), hidden, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(g.sum(), weight)


def test_linear_cross_entropy_with_no_target_has_the_zero_gradients_of_cross_entropy():
    """A batch whose every label is ignore_index: NaN loss and zero gradients, as F.cross_entropy gives (the
    fused op gave NaN gradients, which an optimizer step would write into every weight)."""
    hidden, weight, labels = _problem()
    none = torch.full_like(labels, -100)
    want = torch.autograd.grad(_reference(hidden, weight, none), (hidden, weight))
    got = torch.autograd.grad(linear_cross_entropy(hidden, weight, none, chunk_rows=5), (hidden, weight))
    for a, b in zip(got, want):
        assert torch.equal(a, b) and float(b.abs().max()) == 0.0


def test_rms_norm_and_swiglu_refuse_a_second_derivative():
    """Their backward passes are not differentiable (RMSNorm's saved rsqrt is a constant there): a second
    derivative must raise, not come out wrong."""
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(_rms_norm(x, w, 1e-5).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(g.sum(), x)
    (g,) = torch.autograd.grad(_swiglu(x).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(g.sum(), x)
    wg, wu = torch.randn(2, 8, 8, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(_GateUpSwiGLUFunction.apply(x, wg, wu).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(g.sum(), x)


def test_rms_norm_without_pytorchs_fused_kernel_is_the_same(monkeypatch):
    """Where PyTorch lacks aten._fused_rms_norm (older than the op), the formula gives the same values and
    gradients to float32 rounding."""
    from anatomy import fused

    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 5, 16, generator=g, requires_grad=True)
    w = torch.randn(16, generator=g, requires_grad=True)
    up = torch.randn(3, 5, 16, generator=g)
    want = (_rms_norm(x, w, 1e-5), *torch.autograd.grad(_rms_norm(x, w, 1e-5), (x, w), up))
    monkeypatch.setattr(fused, "_HAS_FUSED_RMS", False)
    got = (_rms_norm(x, w, 1e-5), *torch.autograd.grad(_rms_norm(x, w, 1e-5), (x, w), up))
    for a, b in zip(got, want):
        assert _close(a, b, GRAD_RTOL)


def _grad_fns(tensor):
    """The names of every autograd node behind ``tensor``."""
    seen, todo, names = set(), [tensor.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        todo.extend(n for n, _ in node.next_functions)
    return names


def test_onednn_is_there_and_its_products_are_the_plain_ones():
    """This machine's PyTorch has oneDNN's linear op (else the training path silently is MKL's, and the
    tests below test nothing), and its products, plain and with an added operand, equal MKL's to float32
    rounding for the shapes and strides training uses."""
    import platform  # noqa: PLC0415

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("oneDNN's products are used on x86-64 CPUs only")
    assert fused._onednn() is not None
    g = torch.Generator().manual_seed(7)
    a, b, c = (
        torch.randn(64, 48, generator=g),
        torch.randn(40, 48, generator=g),
        torch.randn(64, 40, generator=g),
    )
    for x, w in ((a, b), (a.t(), torch.randn(40, 64, generator=g)), (c.t(), a.t())):
        assert fused._dnn(x, w)
        assert _close(fused._mm_t(x, w, True), x @ w.T, 1e-6)
    assert _close(fused._mm_t_add(a, b, c), c + a @ b.T, 1e-6)
    assert not fused._dnn(a.double(), b.double())


@pytest.mark.parametrize("bias", [False, True])
def test_linear_function_equals_f_linear_and_its_gradients(bias):
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 5, 12, generator=g, requires_grad=True)
    w = torch.randn(7, 12, generator=g, requires_grad=True)
    b = torch.randn(7, generator=g, requires_grad=True) if bias else None
    up = torch.randn(2, 5, 7, generator=g)
    params = (x, w, b) if bias else (x, w)
    got = _LinearFunction.apply(x, w, b)
    want = F.linear(x, w, b)
    assert _close(got, want, 1e-6)
    for a, c in zip(torch.autograd.grad(got, params, up), torch.autograd.grad(want, params, up)):
        assert _close(a, c, 1e-6)
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    b64 = b.detach().double().requires_grad_() if bias else None
    assert torch.autograd.gradcheck(_LinearFunction.apply, (x64, w64, b64))


def test_the_training_forward_takes_onednn_linears_and_counts_the_same_flops():
    """next_token_loss runs the model's Linears as _LinearFunction (else the speed-up is gone and nothing here
    notices); outside it F.linear is untouched; under FlopCounterMode the products are aten's (counted)."""
    model = _tiny()
    x = torch.randint(0, 40, (2, 8))
    batch = (x, torch.cat([x[:, 1:], torch.full((2, 1), -100)], dim=1))
    names = _grad_fns(next_token_loss(model, batch)[0])
    assert "_LinearFunctionBackward" in names and "_GateUpSwiGLUFunctionBackward" in names
    assert "_LinearFunctionBackward" not in _grad_fns(model(x).sum())
    with _OneDNNLinears():
        assert "_LinearFunctionBackward" not in _grad_fns(F.linear(x.double(), torch.randn(3, 8).double()))


@pytest.mark.parametrize(
    "x, w, b",
    [
        (torch.randn(2, 8), torch.randn(5, 7), None),
        (torch.randn(2, 8), torch.randn(5, 8), torch.randn(4)),
        (torch.randn(2, 8), torch.randn(5, 8, 1), None),
    ],
)
def test_onednn_linears_keep_f_linears_errors(x, w, b):
    with pytest.raises(RuntimeError) as plain:
        F.linear(x, w, b)
    with _OneDNNLinears(), pytest.raises(RuntimeError) as got:
        F.linear(x, w, b)
    assert str(got.value) == str(plain.value)


def test_onednn_check_never_runs_under_a_dispatch_mode():
    """_onednn's one-time check multiplies small tensors: under FlopCounterMode (or a fake-tensor trace) it
    would add FLOPs to the count (or cache a verdict on fake tensors), so _dnn says no before running it."""
    from torch.utils.flop_counter import FlopCounterMode

    fused._onednn.cache_clear()
    a = torch.randn(4, 3)
    with FlopCounterMode(display=False) as counter:
        assert not fused._dnn(a, a)
    assert counter.get_total_flops() == 0 and fused._onednn.cache_info().currsize == 0
    assert fused._dnn(a, a)


def test_onednn_off_under_mkldnn_flags_disabled():
    a = torch.randn(4, 3)
    assert fused._dnn(a, a)
    with torch.backends.mkldnn.flags(enabled=False):
        assert not fused._dnn(a, a)
        model = _tiny()
        x = torch.randint(0, 40, (2, 8))
        names = _grad_fns(next_token_loss(model, (x, x))[0])
        assert "_LinearFunctionBackward" not in names  # the Linears stay F.linear's
