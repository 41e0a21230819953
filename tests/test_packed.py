"""Packed GGUF weights (anatomy.packed): the float32 numbers, multiplied without unpacking them first.

Small random blocks run everywhere a C compiler is; the SmolLM2 tests (every tensor of the GGUF, logits,
a long greedy continuation) need the weight package and skip without it.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import anatomy  # noqa: E402
from anatomy import packed as P  # noqa: E402
from anatomy import pretrained  # noqa: E402

pytestmark = [
    pytest.mark.skipif(
        shutil.which("cc") is None and shutil.which("gcc") is None, reason="needs a C compiler"
    ),
    pytest.mark.usefixtures("one_thread"),
]
HAVE_SMOLLM2 = all(
    importlib.util.find_spec(name) is not None
    for name in (pretrained.SMOLLM2_PACKAGE, "gguf", "transformers")
)
needs_smollm2 = pytest.mark.skipif(
    not HAVE_SMOLLM2, reason=f"SmolLM2 not installed ({pretrained.SMOLLM2_PIP})"
)


def _random(kind: str, out_features: int = 40, in_features: int = 96, seed: int = 0) -> P.PackedLinear:
    """Random blocks with float16-valued scales and mins, as a GGUF stores them."""
    g = torch.Generator().manual_seed(seed)
    nb = in_features // 32
    d = (torch.rand(out_features, nb, generator=g) * 0.1).half().float()
    if kind == "q4_1":
        codes = torch.randint(0, 256, (out_features, in_features // 2), generator=g, dtype=torch.uint8)
        m = (-8 * d + torch.randn(out_features, nb, generator=g) * 0.01).half().float()
        return P.PackedLinear(kind, codes, d, m)
    codes = torch.randint(-128, 128, (out_features, in_features), generator=g, dtype=torch.int8)
    return P.PackedLinear(kind, codes, d)


def _weights_by_formula(p: P.PackedLinear) -> torch.Tensor:
    """The GGUF formula in plain torch: Q4_1 w = d * q + m (q: low nibbles, then high), Q8_0 w = d * q."""
    d = p.scales.repeat_interleave(32, dim=1)
    if p.kind == "q8_0":
        return d * p.codes.float()
    blocks = p.codes.view(p.out_features, -1, 16)
    q = torch.cat([blocks & 15, blocks >> 4], dim=-1).reshape(p.out_features, -1).float()
    return d * q + p.mins.repeat_interleave(32, dim=1)


def _kernel_columns(p: P.PackedLinear, columns) -> torch.Tensor:
    """Columns of W as the packed kernel computes them: the products with one-hot rows -> (len, out)."""
    eye = torch.zeros(len(columns), p.in_features)
    eye[torch.arange(len(columns)), torch.as_tensor(columns)] = 1.0
    return torch.cat([p(eye[i : i + 1]) for i in range(len(columns))])  # one row at a time: the kernel


@pytest.mark.parametrize("kind", P.KINDS)
def test_dequantized_weights_are_the_formula_bit_for_bit(kind):
    p = _random(kind)
    w = _weights_by_formula(p)
    assert torch.equal(p.dequantize(), w)
    assert torch.equal(_kernel_columns(p, range(p.in_features)), w.t())  # the kernel's own arithmetic


@pytest.mark.parametrize("kind", P.KINDS)
@pytest.mark.parametrize("rows", [1, 3, 8, 20])
def test_products_agree_with_float32_up_to_the_order_of_the_sums(kind, rows):
    p = _random(kind, seed=rows)
    x = torch.randn(2, rows, p.in_features, generator=torch.Generator().manual_seed(1))
    w = p.dequantize()
    exact = (x.double() @ w.double().t()).float()
    y = p(x)
    assert y.shape == (2, rows, p.out_features)
    # Any order of an fp32 sum of n products errs by at most ~n * eps * sum |x w| (the standard bound); a
    # wrong weight or a lost block would be off by a whole term.
    scale = (x.abs().double() @ w.abs().double().t()).float()
    assert ((y - exact).abs() <= p.in_features * 2**-24 * scale).all()
    if 2 * rows > P._MAX_ROWS:  # a prompt: one float32 matrix product with the same weights
        assert torch.equal(y, F.linear(x, w))


def test_cat_stacks_output_rows():
    a, b = _random("q4_1", 8, seed=1), _random("q4_1", 24, seed=2)
    assert torch.equal(P.PackedLinear.cat([a, b]).dequantize(), torch.cat([a.dequantize(), b.dequantize()]))


def test_a_wrong_weight_would_be_seen():
    # The equality checks above can fail: one changed code changes one weight of the dequantized matrix.
    p = _random("q4_1")
    w = p.dequantize()
    p.codes[3, 5] ^= 1
    assert int((p.dequantize() != w).sum()) == 1


# ---------------------------------------------------------------------------------------------------------
# SmolLM2: every tensor of the GGUF, the logits, a long greedy continuation
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models():
    fp32, tok = pretrained.smollm2(verbose=False)
    packed, _ = pretrained.smollm2(verbose=False, packed=True)
    return fp32, packed, tok


def _pairs(fp32, packed):
    """(float32 weight (out, in), PackedLinear) for every packed Linear of the model."""
    for a, b in zip(fp32.layers, packed.layers):
        sa, ma = a.self_attn, a.mlp
        yield torch.cat([sa.q_proj.weight, sa.k_proj.weight, sa.v_proj.weight]), b.self_attn.qkv_proj
        yield torch.cat([ma.gate_proj.weight, ma.up_proj.weight]), b.mlp.gate_up_proj
        yield sa.o_proj.weight, b.self_attn.o_proj
        yield ma.down_proj.weight, b.mlp.down_proj
    yield fp32.lm_head.weight, packed.lm_head


@needs_smollm2
def test_smollm2_packed_weights_equal_the_float32_weights_exactly(models):
    fp32, packed, _ = models
    pairs = list(_pairs(fp32, packed))
    assert len(pairs) == 4 * 30 + 1  # 210 Q4_1 tensors (q, k, v and gate, up fused) and the Q8_0 head
    assert [p.kind for _, p in pairs].count("q8_0") == 1
    g = torch.Generator().manual_seed(0)
    for w, p in pairs:
        w = w.detach()
        assert torch.equal(p.dequantize(), w), p  # every element of every tensor
        cols = torch.randint(0, p.in_features, (4,), generator=g)
        assert torch.equal(_kernel_columns(p, cols), w[:, cols].t()), p  # the kernel's own dequantization


@needs_smollm2
def test_smollm2_packed_logits_are_as_close_to_exact_as_float32s(models):
    fp32, packed, tok = models
    exact = copy.deepcopy(fp32).double()
    ids = tok("The capital of France is Paris, and the capital of", return_tensors="pt").input_ids
    with torch.inference_mode():
        caches = [m.new_cache() for m in (fp32, packed, exact)]
        steps = [
            [m(ids[:, :5], cache=c)] for m, c in zip((fp32, packed, exact), caches)
        ]  # 5 rows: the kernel
        for t in range(5, ids.shape[1]):  # then one token at a time, as in decoding
            for m, c, out in zip((fp32, packed, exact), caches, steps):
                out.append(m(ids[:, t : t + 1], cache=c))
    a, b, ref = (torch.cat(s, dim=1).double() for s in steps)
    err_fp32, err_packed = (a - ref).abs().max(), (b - ref).abs().max()
    # Both differ from float64 only by rounding; the packed sums are no worse than MKL's (measured: ~0.5x).
    assert err_packed <= 2 * err_fp32, (float(err_packed), float(err_fp32))
    assert err_fp32 < 1e-3 * ref.abs().max()


@needs_smollm2
def test_smollm2_packed_greedy_tokens_are_the_float32_tokens(models):
    fp32, packed, tok = models
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "Explain why the sky is blue."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    a = anatomy.generate(fp32, ids, 128)
    b = anatomy.generate(packed, ids, 128)
    assert torch.equal(a, b)


def _gguf():
    return (
        pretrained._package_dir(pretrained.SMOLLM2_PACKAGE, pretrained.SMOLLM2_PIP) / pretrained.SMOLLM2_GGUF
    )


# Rows of tests/test_bad_inputs.py's table: (argument, bad value, exception[, name the message must hold]).
_CODES, _D = torch.zeros(4, 16, dtype=torch.uint8), torch.ones(4, 1)
BAD_INPUTS = {
    "packed.PackedLinear": (
        lambda **kw: P.PackedLinear(**{"kind": "q4_1", "codes": _CODES, "scales": _D, "mins": _D, **kw}),
        [
            ("kind", "q4_0", ValueError),
            ("kind", None, ValueError),
            ("codes", None, TypeError),
            ("codes", _CODES.long(), TypeError),
            ("codes", torch.zeros(4, 15, dtype=torch.uint8), ValueError),
            ("codes", torch.zeros(16, dtype=torch.uint8), ValueError),
            ("scales", torch.ones(4, 2), ValueError),
            ("scales", torch.ones(4, 1, dtype=torch.long), TypeError),
            ("mins", None, TypeError),
            ("mins", torch.ones(3, 1), ValueError),
        ],
    ),
    "packed.PackedLinear.forward": (
        lambda **kw: P.PackedLinear("q4_1", _CODES, _D, _D)(**{"x": torch.ones(1, 32), **kw}),
        [
            ("x", None, TypeError),
            ("x", torch.ones(1, 32, dtype=torch.float64), TypeError),
            ("x", torch.ones(1, 31), ValueError),
            ("x", torch.tensor(1.0), ValueError),
        ],
    ),
    "packed.pack_llama_gguf": (
        lambda **kw: P.pack_llama_gguf(
            **{"model": anatomy.Transformer(anatomy.Config()), "gguf_path": _gguf(), **kw}
        ),
        [
            ("model", None, TypeError),
            ("model", anatomy.Transformer(anatomy.Config(mask="bidirectional")), TypeError),
            ("gguf_path", "/nonexistent.gguf", ValueError),
            ("gguf_path", None, ValueError),
            ("gguf_path", __file__, ValueError, "GGUF"),
        ],
    ),
}
BAD_INPUTS["smollm2 (packed)"] = (
    lambda **kw: pretrained.smollm2(**{"verbose": False, "packed": True, **kw}),
    [("packed", 1, TypeError), ("packed", "yes", TypeError), ("dtype", torch.float16, ValueError)],
)
BAD_INPUTS_SLOW = {"packed.pack_llama_gguf", "smollm2 (packed)"}  # their valid calls read the GGUF


def test_compiled_takes_a_cc_with_words_of_its_own(monkeypatch, tmp_path):
    """CC="gcc -O0" (or "ccache gcc") is a command with arguments, as make reads it; an unusable CC is a
    RuntimeError, which the decoding step turns into its textbook path."""
    cc = shutil.which("cc") or shutil.which("gcc")
    monkeypatch.setenv("ANATOMY_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", f"{cc} -O0")
    lib = P.compiled("int anatomy_ok(void) { return 7; }", "cc-words", openmp=False)
    assert lib.anatomy_ok() == 7
    monkeypatch.setenv("CC", "gcc 'unclosed")
    with pytest.raises(RuntimeError, match="CC"):
        P.compiled("int anatomy_ok(void) { return 7; }", "cc-words-bad", openmp=False)


def test_compiled_keeps_only_the_latest_builds_of_a_stem(monkeypatch, tmp_path):
    """Old builds of a changed source are pruned to KEEP_BUILDS per stem (the newest by last use); other
    stems' libraries and other files stay."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("needs a C compiler")
    monkeypatch.setenv("ANATOMY_CACHE", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    old = [tmp_path / f"prune-me-{i:016x}.so" for i in range(6)]
    for age, p in enumerate(old):
        p.write_bytes(b"")
        os.utime(p, (1000 + age, 1000 + age))  # old[5] is the most recently used
    others = [tmp_path / "prune-me-other-0123456789abcdef.so", tmp_path / "notes.txt"]
    for p in others:
        p.write_bytes(b"")
    lib = P.compiled("int anatomy_ok(void) { return 5; }", "prune-me", openmp=False)
    assert lib.anatomy_ok() == 5
    kept = sorted(p.name for p in tmp_path.glob("prune-me-*.so") if p not in others)
    assert len(kept) == P.KEEP_BUILDS and {p.name for p in old[-(P.KEEP_BUILDS - 1) :]} < set(kept)
    assert all(p.exists() for p in others)
    # using an existing build makes it the newest: the next builds of other sources keep it
    (built,) = set(kept) - {p.name for p in old}
    for value in (5, 6, 7, 8):
        P.compiled(f"int anatomy_ok(void) {{ return {value}; }}", "prune-me", openmp=False)
    assert (tmp_path / built).exists()
    assert len([p for p in tmp_path.glob("prune-me-*.so") if p not in others]) == P.KEEP_BUILDS
