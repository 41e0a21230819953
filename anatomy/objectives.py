"""Pretraining objectives: what each family predicts, from what, and which positions carry a loss.

Four objectives, each a batch builder plus a loss that ``anatomy.train.train(..., loss_fn=...)`` accepts:

* ``"causal"``: causal language modelling (GPT): every token is predicted from the tokens before it.
* ``"masked"``: masked language modelling (BERT; Devlin et al. 2019): 15% of positions are selected; of
  those, 80% become ``[MASK]``, 10% a random token, 10% stay unchanged; only selected positions are targets.
* ``"span"``: T5's span corruption (Raffel et al. 2020): 15% of tokens, in spans of mean length 3, are cut
  out of the encoder's input and replaced by one sentinel per span; the decoder writes the spans back,
  each after its sentinel.
* ``"prefix"``: prefix language modelling (UniLM; T5's prefix-LM variant): a bidirectional prefix, then
  next-token prediction with a loss on the suffix only.

For a first-order :class:`anatomy.data.MarkovSource` the loss of the Bayes-optimal predictor of every
objective is computed exactly (`bayes_loss`), so a trained model's loss can be read as "optimum + excess".
`signal` counts the positions that carry a loss; `predict_token` asks any of the four models the same
question (the distribution of one text token given the same visible context) so they can be compared.

Token ids: text tokens are ``0 .. n_text - 1``; `SpecialTokens` places ``[MASK]``, the decoder's start
token, ``EOS`` and the sentinels after them.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anatomy._checks import check_bool, check_generator, check_instance, is_number
from anatomy.train import next_token_loss

__all__ = [
    "OBJECTIVES",
    "PrefixLMBatch",
    "Seq2SeqBatch",
    "Signal",
    "SpecialTokens",
    "batch_labels",
    "causal_lm_batch",
    "loss_fn",
    "make_batch",
    "masked_lm_batch",
    "objective_batches",
    "prefix_lm_batch",
    "random_spans_noise_mask",
    "signal",
    "span_corruption_batch",
    "span_corruption_reconstruct",
    "span_counts",
    "text_windows",
    "train_step_flops",
]


OBJECTIVES = ("causal", "masked", "span", "prefix")
IGNORE = -100  # label of a position that carries no loss (PyTorch's cross_entropy ignore_index)


# ---------------------------------------------------------------------------------------------------------
# Vocabulary layout and batch types
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpecialTokens:
    """Where the special tokens live: after the ``n_text`` text tokens, in this order.

    ``[MASK]`` (masked LM), the decoder's start token (encoder-decoder), ``EOS`` (end of a T5 input and
    target), then ``n_sentinels`` sentinels (T5's ``<extra_id_0>``, ``<extra_id_1>``, ...).
    """

    n_text: int
    n_sentinels: int = 16

    def __post_init__(self) -> None:
        _check_int("n_text", self.n_text, 1)
        _check_int("n_sentinels", self.n_sentinels, 0)

    @property
    def mask_id(self) -> int:
        return self.n_text

    @property
    def decoder_start_id(self) -> int:
        return self.n_text + 1

    @property
    def eos_id(self) -> int:
        return self.n_text + 2

    @property
    def sentinel_ids(self) -> list[int]:
        return list(range(self.n_text + 3, self.n_text + 3 + self.n_sentinels))

    @property
    def vocab_size(self) -> int:
        """The model's vocabulary: text tokens plus every special token."""
        return self.n_text + 3 + self.n_sentinels


@dataclass
class PrefixLMBatch:
    """A prefix-LM batch: ``input_ids`` (B, N); ``labels`` (B, N), -100 on the prefix; one ``prefix_len``."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    prefix_len: int


@dataclass
class Seq2SeqBatch:
    """An encoder-decoder batch: encoder inputs (B, N_enc); decoder inputs and labels (B, N_dec)."""

    encoder_input_ids: torch.Tensor
    decoder_input_ids: torch.Tensor
    labels: torch.Tensor


ObjectiveBatch = "tuple[torch.Tensor, torch.Tensor] | PrefixLMBatch | Seq2SeqBatch"


# ---------------------------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------------------------


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


def _check_fraction(name: str, value, *, open_low: bool = True) -> float:
    if not is_number(value):
        raise TypeError(f"{name} must be a float, got {type(value).__name__} {value!r}")
    ok = (0.0 < value <= 1.0) if open_low else (0.0 <= value <= 1.0)
    if not ok:
        raise ValueError(f"{name} must be in {'(0, 1]' if open_low else '[0, 1]'}, got {value}")
    return float(value)


def _check_seqs(seqs, name: str = "seqs", min_len: int = 2) -> torch.Tensor:
    if not isinstance(seqs, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids (B, N), got {type(seqs).__name__}")
    if seqs.dtype.is_floating_point or seqs.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids, got {seqs.dtype}")
    if seqs.dim() != 2 or seqs.shape[0] < 1 or seqs.shape[1] < min_len:
        raise ValueError(
            f"{name} must have shape (B, N) with B >= 1, N >= {min_len}, got {tuple(seqs.shape)}"
        )
    return seqs.long()


def _check_objective(objective: str) -> str:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    return objective


def _check_text_ids(seqs: torch.Tensor, special: SpecialTokens, name: str = "seqs") -> None:
    if not isinstance(special, SpecialTokens):
        raise TypeError(f"special must be a SpecialTokens, got {type(special).__name__}")
    if int(seqs.min()) < 0 or int(seqs.max()) >= special.n_text:
        raise ValueError(
            f"{name} must hold text token ids in [0, {special.n_text}), "
            f"got {int(seqs.min())}..{int(seqs.max())}"
        )


# ---------------------------------------------------------------------------------------------------------
# Batch builders
# ---------------------------------------------------------------------------------------------------------


def causal_lm_batch(
    seqs: torch.Tensor, *, label_fraction: float = 1.0, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal LM: x = seqs[:, :-1], y = seqs[:, 1:] (each (B, N - 1)); every position predicts the next token.

    label_fraction < 1 keeps the loss on a random subset of exactly round(label_fraction * (N - 1))
    positions per sequence (the rest get label -100): the same task and the same inputs, only fewer
    positions carry a training signal. That is the controlled experiment of the signal density chapter.
    """
    seqs = _check_seqs(seqs)
    f = _check_fraction("label_fraction", label_fraction)
    x, y = seqs[:, :-1], seqs[:, 1:].clone()
    if f < 1.0:
        B, n = y.shape
        keep = max(1, round(f * n))
        order = torch.rand(B, n, generator=generator).argsort(dim=1)
        drop = order[:, keep:]  # a uniformly random subset of n - keep positions per row
        y.scatter_(1, drop, IGNORE)
    return x, y


def masked_lm_batch(
    seqs: torch.Tensor,
    special: SpecialTokens,
    *,
    rate: float = 0.15,
    replace: tuple[float, float, float] = (0.8, 0.1, 0.1),
    selection: str = "exact",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masked LM: returns the corrupted input (B, N) and the labels (B, N), -100 where not selected.

    rate: share of positions selected as targets. selection: "exact" selects round(rate * N) positions
    per sequence (BERT's original data pipeline), "bernoulli" selects each position independently with
    probability `rate` (as transformers' DataCollatorForLanguageModeling does). replace: the probabilities
    that a selected position becomes ``[MASK]``, a uniformly random text token, or stays unchanged.
    """
    seqs = _check_seqs(seqs, min_len=1)
    _check_text_ids(seqs, special)
    rate = _check_fraction("rate", rate)
    if (
        not isinstance(replace, (tuple, list))
        or len(replace) != 3
        or any(not is_number(p) or p < 0 for p in replace)
        or not math.isclose(sum(replace), 1.0, abs_tol=1e-9)
    ):
        raise ValueError(
            f"replace must be three probabilities (mask, random, keep) summing to 1, got {replace!r}"
        )
    if selection not in ("exact", "bernoulli"):
        raise ValueError(f"selection must be 'exact' or 'bernoulli', got {selection!r}")
    B, N = seqs.shape
    if selection == "exact":
        k = max(1, round(rate * N))
        order = torch.rand(B, N, generator=generator).argsort(dim=1)
        selected = torch.zeros(B, N, dtype=torch.bool)
        selected.scatter_(1, order[:, :k], True)
    else:
        selected = torch.rand(B, N, generator=generator) < rate
    u = torch.rand(B, N, generator=generator)
    to_mask = selected & (u < replace[0])
    to_random = selected & (u >= replace[0]) & (u < replace[0] + replace[1])
    random_tokens = torch.randint(special.n_text, (B, N), generator=generator)
    x = torch.where(to_mask, torch.full_like(seqs, special.mask_id), seqs)
    x = torch.where(to_random, random_tokens, x)
    labels = torch.where(selected, seqs, torch.full_like(seqs, IGNORE))
    return x, labels


def span_counts(length: int, noise_density: float = 0.15, mean_span_length: float = 3.0) -> tuple[int, int]:
    """T5's deterministic counts for a sequence of `length` tokens: (noise tokens, noise spans)."""
    _check_int("length", length, 2)
    _check_fraction("noise_density", noise_density)
    if not is_number(mean_span_length) or not 1 <= mean_span_length < math.inf:
        raise ValueError(f"mean_span_length must be a finite number >= 1, got {mean_span_length!r}")
    n_noise = min(max(round(length * noise_density), 1), length - 1)
    n_spans = max(round(n_noise / mean_span_length), 1)
    if n_spans > length - n_noise:
        raise ValueError(
            f"{n_spans} noise spans need as many non-noise spans, but only {length - n_noise} tokens "
            "are left "
            f"(length={length}, noise_density={noise_density}, mean_span_length={mean_span_length})"
        )
    return n_noise, n_spans


def _segment_lengths(n_items: int, n_segments: int, generator: torch.Generator | None) -> list[int]:
    """Lengths of a uniformly random composition of n_items into n_segments positive parts."""
    cuts = sorted(c + 1 for c in torch.randperm(n_items - 1, generator=generator)[: n_segments - 1].tolist())
    edges = [0, *cuts, n_items]
    return [b - a for a, b in zip(edges, edges[1:])]


def _random_segmentation(n_items: int, n_segments: int, generator: torch.Generator | None) -> torch.Tensor:
    """Lengths (n_segments,) of a uniformly random composition of n_items into positive parts."""
    return torch.tensor(_segment_lengths(n_items, n_segments, generator))


def _noise_mask(
    length: int, n_noise: int, n_spans: int, generator: torch.Generator | None, random_roll: bool
) -> list[bool]:
    """`random_spans_noise_mask` as a list (the same random draws), for the batch builder's loop."""
    noise_lengths = _segment_lengths(n_noise, n_spans, generator)
    plain_lengths = _segment_lengths(length - n_noise, n_spans, generator)
    mask: list[bool] = []
    for plain, noise in zip(plain_lengths, noise_lengths):
        mask += [False] * plain + [True] * noise
    if random_roll:
        shift = int(torch.randint(length, (1,), generator=generator))
        mask = mask[length - shift :] + mask[: length - shift]  # torch.roll(mask, shift)
    return mask


def random_spans_noise_mask(
    length: int,
    noise_density: float = 0.15,
    mean_span_length: float = 3.0,
    *,
    generator: torch.Generator | None = None,
    random_roll: bool = False,
) -> torch.Tensor:
    """T5's noise mask (bool, (length,)): alternating non-noise and noise spans, starting with non-noise.

    The number of noise tokens and spans is fixed by `span_counts`; the lengths of the noise spans and of
    the non-noise spans are independent uniformly random compositions. So, as in T5, the first token is
    never noise and the last always is. random_roll=True rotates the mask by a random offset (an option
    of later T5 code), so spans can sit anywhere.
    """
    check_bool("random_roll", random_roll)
    check_generator("generator", generator)
    n_noise, n_spans = span_counts(length, noise_density, mean_span_length)
    return torch.tensor(_noise_mask(length, n_noise, n_spans, generator, random_roll), dtype=torch.bool)


def span_corruption_batch(
    seqs: torch.Tensor,
    special: SpecialTokens,
    *,
    noise_density: float = 0.15,
    mean_span_length: float = 3.0,
    generator: torch.Generator | None = None,
    random_roll: bool = False,
) -> Seq2SeqBatch:
    """T5 span corruption of every row of seqs (B, N) -> a `Seq2SeqBatch` for an `anatomy.EncoderDecoder`.

    Encoder input: the text with each noise span replaced by one sentinel, then EOS.
    Targets: each sentinel followed by the span it replaced, then EOS.
    Decoder input: the targets shifted right behind the decoder's start token (teacher forcing).
    With T5's default (no roll) every row has the same number of spans, so no padding is needed; with
    random_roll a span can wrap around and split in two, and rows are padded with EOS / label -100.
    """
    seqs = _check_seqs(seqs)
    _check_text_ids(seqs, special)
    B, N = seqs.shape
    n_noise, n_spans = span_counts(N, noise_density, mean_span_length)
    needed = n_spans + (1 if random_roll else 0)
    if special.n_sentinels < needed:
        raise ValueError(
            f"special has {special.n_sentinels} sentinels, span corruption of length {N} needs {needed}"
        )
    sentinels = special.sentinel_ids
    enc_rows, tgt_rows = [], []
    for row in seqs.tolist():
        mask = _noise_mask(N, n_noise, n_spans, generator, random_roll)  # random_spans_noise_mask's draws
        enc, tgt, j = [], [], -1
        for t, (token, noisy) in enumerate(zip(row, mask)):
            if noisy:
                if t == 0 or not mask[t - 1]:  # a new span starts
                    j += 1
                    enc.append(sentinels[j])
                    tgt.append(sentinels[j])
                tgt.append(token)
            else:
                enc.append(token)
        enc_rows.append(enc + [special.eos_id])
        tgt_rows.append(tgt + [special.eos_id])
    n_enc, n_tgt = max(map(len, enc_rows)), max(map(len, tgt_rows))
    enc = torch.tensor([e + [special.eos_id] * (n_enc - len(e)) for e in enc_rows], dtype=torch.long)
    labels = torch.tensor([t + [IGNORE] * (n_tgt - len(t)) for t in tgt_rows], dtype=torch.long)
    dec_in = torch.full((B, n_tgt), special.eos_id, dtype=torch.long)
    dec_in[:, 0] = special.decoder_start_id
    dec_in[:, 1:] = labels[:, :-1].clamp(min=0)
    dec_in[:, 1:][labels[:, :-1] == IGNORE] = special.eos_id
    return Seq2SeqBatch(enc, dec_in, labels)


def span_corruption_reconstruct(
    encoder_input_ids: Sequence[int] | torch.Tensor,
    targets: Sequence[int] | torch.Tensor,
    special: SpecialTokens,
) -> list[int]:
    """Put the spans in `targets` back in place of their sentinels in `encoder_input_ids`: the original text.

    Both are one row (1-D); EOS and -100 padding are ignored. Raises if a sentinel of the input has no span.
    """
    check_instance("special", special, SpecialTokens, "a SpecialTokens")
    for name, ids in (("encoder_input_ids", encoder_input_ids), ("targets", targets)):
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise ValueError(f"{name} must be one row (1-D), got shape {tuple(ids.shape)}")
        elif not isinstance(ids, Sequence) or isinstance(ids, str):
            raise TypeError(f"{name} must be a sequence of ints or a 1-D tensor, got {type(ids).__name__}")
    enc = [
        int(t)
        for t in (
            encoder_input_ids.tolist() if isinstance(encoder_input_ids, torch.Tensor) else encoder_input_ids
        )
    ]
    tgt = [int(t) for t in (targets.tolist() if isinstance(targets, torch.Tensor) else targets)]
    sentinel_set = set(special.sentinel_ids)
    spans: dict[int, list[int]] = {}
    current = None
    for t in tgt:
        if t in (special.eos_id, IGNORE):
            current = None
            continue
        if t in sentinel_set:
            current = t
            spans[current] = []
        elif current is None:
            raise ValueError(f"targets have text token {t} before any sentinel")
        else:
            spans[current].append(t)
    out: list[int] = []
    for t in enc:
        if t == special.eos_id:
            continue
        if t in sentinel_set:
            if t not in spans:
                raise ValueError(f"sentinel {t} of the encoder input has no span in the targets")
            out.extend(spans[t])
        else:
            out.append(t)
    return out


def prefix_lm_batch(
    seqs: torch.Tensor, *, prefix_len: int | None = None, generator: torch.Generator | None = None
) -> PrefixLMBatch:
    """Prefix LM on seqs (B, N): inputs x = seqs[:, :-1]; positions >= prefix_len - 1 predict the next token.

    Tokens 0 .. prefix_len - 1 form the bidirectional prefix; the loss covers the suffix tokens
    seqs[:, prefix_len:], i.e. N - prefix_len targets per row. prefix_len None: uniform in [1, N - 1], one
    split per batch (the attention kernel takes one prefix length).
    """
    seqs = _check_seqs(seqs)
    check_generator("generator", generator)
    N = seqs.shape[1]
    if prefix_len is None:
        prefix_len = int(torch.randint(1, N, (1,), generator=generator))
    _check_int("prefix_len", prefix_len, 1)
    if prefix_len > N - 1:
        raise ValueError(f"prefix_len must be in [1, N - 1] = [1, {N - 1}], got {prefix_len}")
    x, y = seqs[:, :-1], seqs[:, 1:].clone()
    y[:, : prefix_len - 1] = IGNORE  # position i < prefix_len - 1 could see its own target
    return PrefixLMBatch(x, y, prefix_len)


def make_batch(
    objective: str,
    seqs: torch.Tensor,
    special: SpecialTokens | None = None,
    *,
    generator: torch.Generator | None = None,
    **options,
):
    """Build a training batch of `objective` from text windows seqs (B, N); options go to the builder."""
    _check_objective(objective)
    if objective == "causal":
        return causal_lm_batch(seqs, generator=generator, **options)
    if objective == "prefix":
        return prefix_lm_batch(seqs, generator=generator, **options)
    if special is None:
        raise ValueError(f"objective {objective!r} needs special (a SpecialTokens)")
    if objective == "masked":
        return masked_lm_batch(seqs, special, generator=generator, **options)
    return span_corruption_batch(seqs, special, generator=generator, **options)


def _step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7919 + 17) % 2**63)


def text_windows(
    ids: torch.Tensor, batch_size: int, seq_len: int, seed: int = 0
) -> Callable[[int], torch.Tensor]:
    """``step -> (batch_size, seq_len)`` random windows of a 1-D token stream, fixed by (seed, step)."""
    from anatomy.data import token_batches

    _check_int("seq_len", seq_len, 2)
    pairs = token_batches(ids, batch_size, seq_len - 1, seed=seed)

    def windows(step: int) -> torch.Tensor:
        x, y = pairs(step)
        return torch.cat([x, y[:, -1:]], dim=1)

    return windows


def objective_batches(
    objective: str,
    windows: Callable[[int], torch.Tensor],
    special: SpecialTokens | None = None,
    *,
    seed: int = 0,
    **options,
) -> Callable[[int], ObjectiveBatch]:
    """``step -> batch`` for `train`: the text windows of `step`, corrupted for `objective`.

    The randomness of the objective (masks, spans, split points) depends only on (seed, step), so a run
    is reproducible and different objectives can share the same text windows.
    """
    _check_objective(objective)
    _check_int("seed", seed, 0)
    if not callable(windows):
        raise TypeError(f"windows must be a callable step -> (B, N) token ids, got {type(windows).__name__}")

    def batch(step: int):
        return make_batch(objective, windows(step), special, generator=_step_generator(seed, step), **options)

    return batch


# ---------------------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------------------


def _check_loss_args(model, batch, kind: type) -> None:
    if not callable(model):
        raise TypeError(f"model must be a model (callable), got {type(model).__name__}")
    check_instance("batch", batch, kind, f"a {kind.__name__}")


def _ce(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE)
    return loss, int((labels != IGNORE).sum())


def prefix_lm_loss(model: nn.Module, batch: PrefixLMBatch) -> tuple[torch.Tensor, int]:
    """Cross-entropy over the suffix of a `PrefixLMBatch`; the model must have ``config.mask == "prefix"``."""
    _check_loss_args(model, batch, PrefixLMBatch)
    return _ce(model(batch.input_ids, prefix_len=batch.prefix_len), batch.labels)


def span_corruption_loss(model: nn.Module, batch: Seq2SeqBatch) -> tuple[torch.Tensor, int]:
    """Cross-entropy over every target (sentinels, span tokens, EOS) of a `Seq2SeqBatch`."""
    _check_loss_args(model, batch, Seq2SeqBatch)
    logits = model(batch.decoder_input_ids, encoder_input_ids=batch.encoder_input_ids)
    return _ce(logits, batch.labels)


_LOSSES = {
    "causal": next_token_loss,  # anatomy.train's loss: the labels say where the loss is,
    "masked": next_token_loss,  # so masked LM needs no other computation
    "prefix": prefix_lm_loss,
    "span": span_corruption_loss,
}


def loss_fn(objective: str) -> Callable[[nn.Module, ObjectiveBatch], tuple[torch.Tensor, int]]:
    """The loss of `objective`: ``loss_fn(model, batch) -> (loss, n_targets)``, for anatomy.train."""
    return _LOSSES[_check_objective(objective)]


# ---------------------------------------------------------------------------------------------------------
# Which positions carry a training signal
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Signal:
    """Where the loss is in one batch built from `text_tokens` tokens of text."""

    text_tokens: int  # tokens of text the batch was built from (B * N)
    positions: int  # positions the model processes (encoder + decoder for span corruption)
    targets: int  # positions that carry a loss
    text_targets: int  # of which predict a text token (not a sentinel or EOS)

    @property
    def share(self) -> float:
        """Loss-carrying positions per token of text."""
        return self.targets / self.text_tokens

    @property
    def text_share(self) -> float:
        """Text tokens predicted per token of text."""
        return self.text_targets / self.text_tokens


def batch_labels(batch) -> torch.Tensor:
    """The labels (-100 where no loss) of any batch this module builds."""
    if isinstance(batch, (PrefixLMBatch, Seq2SeqBatch)):
        return batch.labels
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[1]
    raise TypeError(
        f"batch must be (x, labels), a PrefixLMBatch or a Seq2SeqBatch, got {type(batch).__name__}"
    )


def signal(batch, text_tokens: int, special: SpecialTokens | None = None) -> Signal:
    """Count the positions of `batch` that carry a loss; text_tokens: B * N of its text windows."""
    _check_int("text_tokens", text_tokens, 1)
    if special is not None:
        check_instance("special", special, SpecialTokens, "a SpecialTokens or None")
    labels = batch_labels(batch)
    target = labels != IGNORE
    n_text = special.n_text if special is not None else None
    text = target if n_text is None else target & (labels < n_text)
    if isinstance(batch, Seq2SeqBatch):
        positions = batch.encoder_input_ids.numel() + batch.decoder_input_ids.numel()
    else:
        positions = labels.numel()
    return Signal(text_tokens, positions, int(target.sum()), int(text.sum()))


# ---------------------------------------------------------------------------------------------------------
# Compute: counted FLOPs of one training step
# ---------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _dynamo_left_unloaded():
    """While counting, FlopCounterMode's dispatch handler runs without importing ``torch._dynamo``.

    torch wraps every dispatch mode's ``__torch_dispatch__`` in ``torch._disable_dynamo``, which imports
    ``torch._dynamo`` on the first call (1.0-1.5 s of CPU, measured) only to exclude the handler from a
    compiled graph. With ``torch._dynamo`` not imported nothing can be compiling, so the handler is called
    as it is (the wrapper's own cache attribute, set here and removed afterwards): the same counts.
    When ``torch._dynamo`` is already loaded, or torch's internals differ from these (another version: no
    ``_FlopCounterMode``, no wrapper, an attribute that cannot be set), nothing is changed: slower, the same
    count. Two threads counting at once leave it as they found it (only the setter removes it).
    """
    try:
        from torch.utils.flop_counter import _FlopCounterMode
    except ImportError:
        _FlopCounterMode = None
    handler = _FlopCounterMode.__dict__.get("__torch_dispatch__") if _FlopCounterMode is not None else None
    raw = getattr(handler, "__wrapped__", None)
    if "torch._dynamo" in sys.modules or raw is None or hasattr(raw, "__dynamo_disable"):
        yield
        return
    try:
        raw.__dynamo_disable = raw
    except (AttributeError, TypeError):
        yield
        return
    try:
        yield
    finally:
        if raw.__dict__.get("__dynamo_disable") is raw:
            raw.__dict__.pop("__dynamo_disable", None)


def train_step_flops(model: nn.Module, loss: Callable, batch) -> int:
    """Matmul FLOPs of one forward + backward pass of ``loss(model, batch)``, counted by PyTorch.

    Attention runs through the dense reference kernel while counting, so its score and value products
    are included at full (unmasked) size for every objective alike. Gradients are discarded.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from anatomy.model import Attention

    check_instance("model", model, nn.Module, "a torch.nn.Module")
    if not callable(loss):
        raise TypeError(f"loss must be a callable (model, batch) -> (loss, n), got {type(loss).__name__}")
    configs = {id(m.config): m.config for m in model.modules() if isinstance(m, Attention)}
    saved = {k: c.attn_backend for k, c in configs.items()}
    try:
        for c in configs.values():
            c.attn_backend = "reference"
        with _dynamo_left_unloaded(), FlopCounterMode(display=False) as counter:
            value, _ = loss(model, batch)
            value.backward()
    finally:
        for k, c in configs.items():
            c.attn_backend = saved[k]
        model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())
