"""The Triton kernel against the float64 reference, run on the CPU by the Triton interpreter.

``TRITON_INTERPRET=1`` has to be in the environment when triton itself is imported: triton decorates its
own standard library (``tl.max``, ``tl.cdiv`` ...) at import time, and imports more of itself lazily at the
first launch, so the flag has to stay on for the rest of the process, where it would turn every Triton
kernel into Python. So the interpreter tests (marked ``interpreter``) always run in a child pytest process
started with the flag, by test_interpreter_tests_in_a_child_process, whatever the collecting process
imported before; in that child (or wherever ``TRITON_INTERPRET=1`` was set from the start) they run
in-process, and everywhere else they skip. The child-process test fails unless the child ran at least as
many of them as this process collected, all passing, none skipped: a selection cannot skip them silently.

Without a GPU, one more child process lowers every kernel for NVIDIA targets (TTIR and TTGIR, the passes
that type-check and lay out the kernel), which catches what the lenient interpreter lets through; with a
GPU, another runs the compiled kernel.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"

triton = pytest.importorskip("triton", reason="triton is not installed (pip install 'why-decoder-only[gpu]')")

from anatomy import attention, count_tiles  # noqa: E402
from anatomy.kernels.tiled import tiled_attention  # noqa: E402

if INTERPRETER:
    import anatomy.kernels.triton_kernel as tk

    assert tk.INTERPRET, "anatomy.kernels.triton_kernel was imported before TRITON_INTERPRET was set"
else:
    tk = None

_IN_CHILD = "run by test_interpreter_tests_in_a_child_process, with TRITON_INTERPRET=1"


def interpreted(test):
    """Marks an interpreter test: selected in the child by ``-m interpreter``, skipped outside it."""
    return pytest.mark.interpreter(pytest.mark.skipif(not INTERPRETER, reason=_IN_CHILD)(test))


def _env_without_interpreter() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def _outcomes(stdout: str) -> dict[str, int]:
    """The counts of pytest's final summary line (``45 passed, 5 deselected in 20.1s``): {outcome: count}."""
    lines = [line for line in stdout.splitlines() if re.search(r"\bin [0-9.]+s\b", line)]
    if not lines:
        return {}
    found = re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)", lines[-1])
    return {("error" if what.startswith("error") else what): int(n) for n, what in found}


def check_all_ran(stdout: str, expected: int) -> int:
    """Raises AssertionError unless the run whose output is ``stdout`` passed at least ``expected`` (and at
    least one) tests and skipped, failed or errored none; returns how many passed."""
    counts = _outcomes(stdout)
    bad = {k: counts.get(k, 0) for k in ("failed", "error", "skipped", "xfailed", "xpassed")}
    passed = counts.get("passed", 0)
    assert passed >= max(1, expected) and not any(bad.values()), (
        f"expected at least {max(1, expected)} interpreter tests to pass and none to skip or fail; the "
        f"child's summary says {counts or 'nothing'}:\n" + stdout[-3000:]
    )
    return passed


def test_the_run_check_fails_when_tests_skip_or_none_ran():
    ok = "....\n45 passed, 5 deselected in 20.12s\n"
    assert check_all_ran(ok, 45) == 45
    for bad, expected in (
        ("50 deselected in 0.50s", 0),  # none selected
        ("45 skipped, 5 deselected in 1.00s", 45),  # every one skipped (the flag missing)
        ("44 passed, 1 skipped in 9.00s", 45),
        ("44 passed, 1 failed in 9.00s", 45),
        ("40 passed in 9.00s", 45),  # fewer than this process collected
        ("no tests ran in 0.01s", 0),
        ("", 0),
    ):
        with pytest.raises(AssertionError):
            check_all_ran(bad, expected)


@pytest.mark.skipif(INTERPRETER, reason="TRITON_INTERPRET=1: the interpreter tests run in this process")
def test_interpreter_tests_in_a_child_process(request):
    here = [it for it in request.session.items if it.get_closest_marker("interpreter") is not None]
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", str(Path(__file__)), "-q", "-p", "no:cacheprovider",
         "-m", "interpreter"],
        capture_output=True, text=True, env=env, timeout=1800,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    check_all_ran(result.stdout, len(here))


MASKS = ["causal", "bidirectional", "prefix"]


def make_qkv(b, hq, hkv, nq, nk, d, seed, dtype=torch.float32, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, nq, d, generator=g) * scale
    k = torch.randn(b, hkv, nk, d, generator=g) * scale
    v = torch.randn(b, hkv, nk, d, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def reference64(q, k, v, mask, **kw):
    return attention(q.double(), k.double(), v.double(), mask, backend="reference", **kw)


def reference_lse64(q, k, mask, *, q_offset, prefix_len):
    """log sum_j exp(q.k_j / sqrt(D)) over the visible keys, in float64."""
    from anatomy.masks import dense_mask

    G = q.shape[1] // k.shape[1]
    kk = k.double().repeat_interleave(G, dim=1)
    s = (q.double() @ kk.transpose(-1, -2)) * q.shape[-1] ** -0.5
    m = dense_mask(mask, q.shape[2], k.shape[2], q_offset=q_offset, prefix_len=prefix_len)
    return torch.logsumexp(s.masked_fill(~m, float("-inf")), dim=-1)


# (B, Hq, Hkv, Nq, Nk, D, tile, q_offset, prefix_len): square, cache-like, GQA 1/2/3/4, ragged sizes,
# head_dim below 16 and not a power of two, tiles that are not powers of two, decoding (Nq = 1).
CASES = [
    (1, 2, 1, 256, 256, 64, 128, None, 100),  # the largest: GQA 2, tile 128
    (1, 2, 2, 200, 200, 32, 64, None, 64),  # MHA, ragged last tiles
    (2, 3, 1, 70, 150, 24, 32, None, 37),  # GQA 3, batch 2, queries at the end of the keys, D = 24
    (1, 2, 1, 40, 100, 8, 16, 10, 45),  # explicit q_offset below the default, D = 8
    (1, 4, 1, 33, 97, 16, 100, None, 97),  # GQA 4; tile 100 runs as 64; prefix covers every key
    (1, 2, 1, 50, 50, 16, 7, None, 0),  # tile 7 runs as 16; empty prefix = causal
    (1, 3, 1, 1, 77, 64, 32, None, 20),  # decoding one token against 77 cached keys
]


def _kw(mask, q_offset, prefix_len):
    return dict(q_offset=q_offset, prefix_len=prefix_len if mask == "prefix" else None)


@interpreted
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:6])) + f"-t{c[6]}")
@pytest.mark.parametrize("mask", MASKS)
def test_forward_matches_float64_reference(mask, case):
    b, hq, hkv, nq, nk, d, tile, q_offset, prefix_len = case
    q, k, v = make_qkv(b, hq, hkv, nq, nk, d, seed=nq * 31 + nk)
    kw = _kw(mask, q_offset, prefix_len)
    out = attention(q, k, v, mask, backend="triton", tile=tile, **kw)
    assert out.shape == q.shape and out.dtype == torch.float32
    assert (out.double() - reference64(q, k, v, mask, **kw)).abs().max().item() <= 1e-5


@interpreted
@pytest.mark.parametrize("mask", MASKS)
def test_log_sum_exp_and_large_logits(mask):
    # Logits above 88.7 overflow exp() in float32 without the running maximum.
    q, k, v = make_qkv(1, 4, 2, 90, 130, 32, seed=7, scale=6.0)
    kw = _kw(mask, None, 50)
    out, lse = tk.triton_attention(
        q, k, v, mask, q_offset=130 - 90, tile=32, return_lse=True, prefix_len=kw["prefix_len"]
    )
    assert lse.shape == (1, 4, 90) and lse.dtype == torch.float32
    assert lse.max() > 100  # exp() of such logits overflows float32: the running maximum is needed
    ref_lse = reference_lse64(q, k, mask, q_offset=40, prefix_len=kw["prefix_len"])
    assert (lse.double() - ref_lse).abs().max().item() <= 1e-6 * ref_lse.abs().max().item()
    # float32 scores of size ~150 carry absolute rounding errors ~1e-5 whatever the kernel, so the output
    # is held to the error of the dense float32 computation (the reference backend) rather than to 1e-5.
    ref = reference64(q, k, v, mask, **kw)
    dense_out = attention(q, k, v, mask, backend="reference", q_offset=40, prefix_len=kw["prefix_len"])
    _, lse_tiled = tiled_attention(
        q, k, v, mask, q_offset=40, prefix_len=kw["prefix_len"], tile=32, return_lse=True
    )
    err, err_dense = ((o.double() - ref).abs().max().item() for o in (out, dense_out))
    assert torch.isfinite(out).all() and err <= max(1e-5, 2 * err_dense)
    assert (lse - lse_tiled).abs().max().item() <= 1e-4


def _grads(q, k, v, fn, with_lse):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out, lse = fn(q, k, v)
    g = torch.Generator().manual_seed(3)
    w_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
    loss = (out * w_out).sum()
    if with_lse:
        loss = loss + (lse * torch.randn(lse.shape, generator=g, dtype=torch.float64).to(lse.dtype)).sum()
    loss.backward()
    return out, q.grad, k.grad, v.grad


GRAD_CASES = [
    (1, 4, 2, 70, 100, 24, 32, None, 30),  # GQA 2, queries at the end of the keys, ragged
    (1, 3, 1, 45, 45, 16, 16, 0, 17),  # GQA 3, square, small tiles
]


@interpreted
@pytest.mark.parametrize(
    "case,with_lse",
    [(GRAD_CASES[0], False), (GRAD_CASES[1], False), (GRAD_CASES[0], True)],
    ids=["gqa2-offset-ragged", "gqa3-square-tile16", "gqa2-offset-ragged+lse"],
)
@pytest.mark.parametrize("mask", MASKS)
def test_gradients_match_float64_reference(mask, case, with_lse):
    b, hq, hkv, nq, nk, d, tile, q_offset, prefix_len = case
    q, k, v = make_qkv(b, hq, hkv, nq, nk, d, seed=nk)
    kw = _kw(mask, q_offset, prefix_len)
    off = nk - nq if q_offset is None else q_offset

    def triton_fn(q, k, v):
        return tk.triton_attention(
            q, k, v, mask, q_offset=off, prefix_len=kw["prefix_len"], tile=tile, return_lse=True
        )

    def ref_fn(q, k, v):
        return reference64(q, k, v, mask, **kw), reference_lse64(
            q, k, mask, q_offset=off, prefix_len=kw["prefix_len"]
        )

    got = _grads(q, k, v, triton_fn, with_lse)
    want = _grads(q.double(), k.double(), v.double(), ref_fn, with_lse)
    for name, a, e in zip(("out", "dq", "dk", "dv"), got, want):
        assert a.dtype == torch.float32
        assert (a.double() - e).abs().max().item() <= 1e-5, name


@interpreted
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)], ids=["fp16", "bf16"])
def test_half_precision_inputs(dtype, tol):
    q, k, v = make_qkv(1, 2, 1, 60, 90, 32, seed=11, dtype=dtype)
    for mask in MASKS:
        kw = _kw(mask, None, 25)
        out = attention(q, k, v, mask, backend="triton", tile=32, **kw)
        assert out.dtype == dtype
        # The reference sees the same rounded inputs; what is left is the kernel's own rounding.
        assert (out.double() - reference64(q, k, v, mask, **kw)).abs().max().item() <= tol
    qg, kg, vg = (t.detach().clone().requires_grad_() for t in (q, k, v))
    attention(qg, kg, vg, "causal", backend="triton", tile=32).float().square().sum().backward()
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    attention(q64, k64, v64, "causal", backend="reference").square().sum().backward()
    for a, e in ((qg, q64), (kg, k64), (vg, v64)):
        assert a.grad.dtype == dtype
        assert (a.grad.double() - e.grad).abs().max().item() <= 10 * tol * e.grad.abs().max().item()


@interpreted
@pytest.mark.parametrize(
    "mask,nq,nk,q_offset,prefix_len,tile",
    [
        ("causal", 256, 256, 0, None, 64),
        ("causal", 200, 256, 56, None, 64),  # ragged query blocks, diagonal not on tile corners
        ("causal", 96, 256, 0, None, 32),  # queries at the start: most key tiles are never loaded
        ("bidirectional", 200, 256, 56, None, 64),
        ("prefix", 256, 256, 0, 70, 64),
        ("prefix", 130, 200, 70, 100, 32),
    ],
)
def test_tiles_above_the_diagonal_are_never_loaded(mask, nq, nk, q_offset, prefix_len, tile):
    q, k, _ = make_qkv(1, 2, 1, nq, nk, 64, seed=0)
    counts = tk.visited_tiles(q, k, k, mask, q_offset=q_offset, prefix_len=prefix_len, tile=tile)
    assert counts.shape == (2, -(-nq // tile), 2)
    assert (counts == counts[:1]).all()  # every head walks the same tiles
    off_band, on_band = counts[0].sum(0).tolist()
    c = count_tiles(mask, nq, nk, 64, tile=tile, q_offset=q_offset, prefix_len=prefix_len)
    assert off_band == c.tiles_full  # tiles every row sees whole: loaded, no mask
    assert on_band == c.tiles_partial  # tiles the diagonal cuts through: loaded, masked
    assert off_band + on_band == c.tiles_total - c.tiles_empty  # nothing above the diagonal
    if mask == "causal":
        assert c.tiles_empty > 0


@interpreted
def test_ragged_last_key_tile_is_on_band():
    # A bidirectional mask has no partial tiles, but the kernel masks a ragged last key tile (Nk % 32 != 0).
    q, k, _ = make_qkv(1, 1, 1, 64, 100, 16, seed=0)
    counts = tk.visited_tiles(q, k, k, "bidirectional", q_offset=36, tile=32)
    assert counts[0].tolist() == [[3, 1], [3, 1]]


@interpreted
def test_key_padding_mask_falls_back_to_the_tiled_kernel():
    q, k, v = make_qkv(2, 4, 2, 10, 30, 8, seed=3)
    pad = torch.ones(2, 30, dtype=torch.bool)
    pad[0, 20:] = False
    out = attention(q, k, v, "bidirectional", backend="triton", tile=16, key_padding_mask=pad)
    want = attention(q[:1], k[:1, :, :20], v[:1, :, :20], "bidirectional", backend="reference")
    assert (out[:1] - want).abs().max() < 1e-5
    tiled = tiled_attention(
        q, k, v, "bidirectional", q_offset=20, prefix_len=None, tile=16, key_padding_mask=pad
    )
    assert torch.equal(out, tiled)


@interpreted
def test_block_size_maps_tiles_to_powers_of_two():
    assert [tk.block_size(t, 64) for t in (1, 7, 16, 31, 32, 100, 128, 1000)] == [
        16,
        16,
        16,
        16,
        32,
        64,
        128,
        128,
    ]
    assert tk.block_size(128, 128) == 64 and tk.block_size(128, 256) == 32 and tk.block_size(128, 8) == 128
    for bad in (0, -3, 2.0, True):
        with pytest.raises(ValueError, match="tile"):
            tk.block_size(bad, 64)
    with pytest.raises(ValueError, match="head_dim"):
        tk.block_size(64, 512)


@interpreted
def test_bad_inputs_are_clear_errors(monkeypatch):
    q, k, v = make_qkv(1, 2, 1, 8, 8, 16, seed=0, dtype=torch.float64)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        attention(q, k, v, backend="triton")
    with pytest.raises(ValueError, match="head_dim"):
        attention(*make_qkv(1, 1, 1, 4, 4, 300, seed=0), backend="triton")
    monkeypatch.setattr(tk, "INTERPRET", False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        attention(*make_qkv(1, 1, 1, 4, 4, 16, seed=0), backend="triton")


_COMPILE_SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    from triton._C.libtriton import ir
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    import anatomy.kernels.triton_kernel as tk
    from anatomy.kernels.triton_backward import _attn_bwd_dkdv, _attn_bwd_dq
    from anatomy.kernels.triton_forward import _attn_fwd

    POINTERS = {"COUNTS": "*i32", "LSE": "*fp32", "DELTA": "*fp32"}
    INTS = {"Hq", "Hkv", "G", "Nq", "Nk", "q_offset", "prefix_len"}

    def signature(fn, dtype, constexprs):
        sig = {}
        for name in fn.arg_names:
            if name in constexprs:
                sig[name] = "constexpr"
            elif name in ("qk_scale", "sm_scale"):
                sig[name] = "fp32"
            elif name.startswith("stride") or name in INTS:
                sig[name] = "i32"
            else:
                sig[name] = POINTERS.get(name, "*" + dtype)
        return sig

    # (compute capability, dtype, mask kind, head_dim): A100 fp32 causal, A100 bf16 prefix with head_dim
    # 128, T4 (Colab) fp16 bidirectional with a head_dim that is not a power of two.
    for cap, dtype, mask_kind, head_dim in ((80, "fp32", 1, 64), (80, "bf16", 2, 128), (75, "fp16", 0, 24)):
        block = tk.block_size(128, head_dim)
        target = GPUTarget("cuda", cap, 32)
        backend = make_backend(target)
        options = backend.parse_options({"num_warps": 4 if block <= 64 else 8, "num_stages": 2})
        base = dict(HEAD_DIM=head_dim, BLOCK_D=max(16, triton.next_power_of_2(head_dim)), BLOCK_M=block,
                    BLOCK_N=block, MASK_KIND=mask_kind, PRECISION="ieee" if dtype == "fp32" else "tf32")
        for fn, extra in ((_attn_fwd, {"COUNT": True}), (_attn_bwd_dq, {}), (_attn_bwd_dkdv, {})):
            # Triton turns int arguments equal to 1 into constants (G = 1 for multi-head attention, Nq = 1
            # when decoding): compile that specialisation too.
            for constexprs in (dict(base, **extra), dict(base, **extra, G=1, Nq=1)):
                src = ASTSource(fn, signature(fn, dtype, constexprs), constexprs=constexprs)
                context = ir.context()
                ir.load_dialects(context)
                backend.load_dialects(context)
                stages = {}
                backend.add_stages(stages, options, src.language)
                module = src.make_ir(target, options, backend.get_codegen_implementation(options),
                                     backend.get_module_map(), context)
                metadata = {}
                for stage in ("ttir", "ttgir"):
                    module = stages[stage](module, metadata)
                assert "tt.dot" in str(module) or "ttng" in str(module) or "dot" in str(module), fn.__name__
    print("compiled")
    """
)


@pytest.mark.slow
def test_kernels_compile_for_nvidia_gpus(tmp_path):
    """No GPU needed: the Triton front end and the GPU layout passes (TTIR, TTGIR) run on the CPU.

    The interpreter runs the kernel body as Python, so it accepts things the compiler rejects (type
    mismatches across loop iterations, non-constexpr shapes, scalar/tensor mixes). Lowering every kernel
    for sm_80 and sm_75 catches those. (The full PTX/cubin build takes minutes on this CPU and is not run.)
    """
    from triton.backends import backends

    if "nvidia" not in backends:
        pytest.skip("this triton build has no NVIDIA backend")
    env = _env_without_interpreter()
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", _COMPILE_SCRIPT], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-3000:]


_GPU_SCRIPT = textwrap.dedent(
    """
    import os
    os.environ.pop("TRITON_INTERPRET", None)
    import torch
    from anatomy import attention
    torch.manual_seed(0)
    for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 2e-2)):
        for mask, kw in (("causal", {}), ("bidirectional", {}), ("prefix", {"prefix_len": 300})):
            q = torch.randn(2, 8, 700, 64, device="cuda").to(dtype).requires_grad_()
            k = torch.randn(2, 2, 1000, 64, device="cuda").to(dtype).requires_grad_()
            v = torch.randn(2, 2, 1000, 64, device="cuda").to(dtype).requires_grad_()
            out = attention(q, k, v, mask, backend="triton", **kw)
            out.float().square().sum().backward()
            q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
            ref = attention(q64, k64, v64, mask, backend="reference", **kw)
            ref.square().sum().backward()
            assert (out.double() - ref).abs().max().item() <= tol, (dtype, mask)
            for a, e in ((q, q64), (k, k64), (v, v64)):
                err = (a.grad.double() - e.grad).abs().max().item()
                assert err <= 10 * tol * e.grad.abs().max().item(), (dtype, mask, err)
    print("gpu ok")
    """
)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU: the compiled kernel is not run")
def test_compiled_kernel_on_the_gpu():
    env = _env_without_interpreter()
    result = subprocess.run(
        [sys.executable, "-c", _GPU_SCRIPT], capture_output=True, text=True, env=env, timeout=900
    )
    assert result.returncode == 0 and "gpu ok" in result.stdout, result.stderr[-3000:]


# ------------------------------------------------------------------ Colab's GPU runtime's Triton version

_COLAB_GPU_PINS = Path(__file__).parent / "colab" / "colab-gpu.txt"
_CHILD_FLAG = "ANATOMY_TRITON_OTHER_VERSION"


def _colab_pin(name: str) -> str | None:
    if not _COLAB_GPU_PINS.exists():
        return None
    import re

    m = re.search(rf"^{name}==(\S+)$", _COLAB_GPU_PINS.read_text(encoding="utf-8"), re.M)
    return m.group(1) if m else None


def _colab_triton() -> str | None:
    return _colab_pin("triton")


def _triton_venv(version: str) -> Path:
    """A cached environment that is this one (a .pth file) plus another Triton version, shadowing ours.

    NumPy comes at the GPU runtime's version too: triton 3.6's interpreter converts one-element arrays
    to Python ints, which NumPy >= 2.3 (this environment's) refuses; Colab's 2.1.3 accepts it.
    """
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "colab_env", Path(__file__).resolve().parents[1] / "scripts" / "colab_env.py"
    )
    colab_env = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(colab_env)
    here = Path(sys.prefix)
    import hashlib
    import shutil

    numpy = _colab_pin("numpy")
    root = colab_env.cache_root().parent
    # The packages, installed once per (Python, Triton, NumPy) and shared by every checkout: a clean clone
    # (a new sys.prefix) then only builds the small overlay below, not a ~40 s pip install of Triton.
    tag = hashlib.sha256(f"{sys.version}\n{version}\n{numpy}".encode()).hexdigest()[:10]
    pkgs = root / f"triton-{version}-packages-{tag}"
    if not (pkgs / ".complete").exists():
        shutil.rmtree(pkgs, ignore_errors=True)
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(pkgs)]
        pip += [f"triton=={version}"] + ([f"numpy=={numpy}"] if numpy else [])
        subprocess.run(pip, check=True, capture_output=True, text=True, timeout=900)
        (pkgs / ".complete").write_text(version + "\n")
    os.utime(pkgs / ".complete")  # last use, for prune_stale
    key = hashlib.sha256(f"{here}\n{tag}".encode()).hexdigest()[:10]
    where = root / f"triton-{version}-{key}"
    # Old copies go: package sets of another Python, Triton or NumPy, and the overlays of checkouts that
    # no longer exist (each clean clone makes one; .complete names its environment), or unused for hours.
    colab_env.prune_stale(root, colab_env.TRITON_PACKAGES_NAMES, keep=pkgs)
    colab_env.prune_stale(root, colab_env.TRITON_OVERLAY_NAMES, keep=where, gone=colab_env.orphaned)
    if (where / ".complete").exists():
        os.utime(where / ".complete")
        return where
    if where.exists():
        shutil.rmtree(where)
    colab_env.overlay_env(here, where)
    # first on sys.path, so that this Triton and NumPy shadow this environment's
    (colab_env._site(where) / "_colab_triton.pth").write_text(
        f"import sys; sys.path.insert(0, {str(pkgs)!r})\n", encoding="utf-8"
    )
    (where / ".complete").write_text(f"{version}\n{here}\n")
    return where


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get(_CHILD_FLAG) == "1", reason="already the other Triton version")
def test_kernel_under_colab_gpu_triton(request):
    """The interpreter tests and the NVIDIA lowering again, under the Triton of Colab's GPU runtime.

    Colab's GPU runtime pins triton 3.6.0 (tests/colab/colab-gpu.txt) next to its torch 2.11.0+cu128; this
    repository pins a newer one. A cached environment (this one plus that Triton and the runtime's NumPy,
    installed --no-deps) runs this module in a child process, so both versions are exercised on every run.
    """
    version = _colab_triton()
    if version is None:
        pytest.skip("no triton pin in tests/colab/colab-gpu.txt")
    if version == triton.__version__:
        pytest.skip(f"this environment already has Colab's triton {version}")
    env = dict(os.environ, TRITON_INTERPRET="1")
    env[_CHILD_FLAG] = "1"
    env.pop("PYTHONPATH", None)
    python = _triton_venv(version) / "bin" / "python"
    seen = subprocess.run(
        [str(python), "-c", "import triton; print(triton.__version__)"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert seen.stdout.strip() == version, seen.stdout + seen.stderr
    result = subprocess.run(
        [str(python), "-m", "pytest", str(Path(__file__)), "-q", "-p", "no:cacheprovider", "-x"],
        capture_output=True, text=True, env=env, timeout=1800,
    )  # fmt: skip
    assert result.returncode == 0, f"triton {version}:\n" + result.stdout[-6000:] + result.stderr[-2000:]
    # the interpreter tests ran there (in-process, the flag set), as many as this process collects
    here = [it for it in request.session.items if it.get_closest_marker("interpreter") is not None]
    assert _outcomes(result.stdout).get("passed", 0) >= max(1, len(here)), result.stdout[-3000:]
