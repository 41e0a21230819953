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

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DEFAULT_RUNS",
    "FAMILY_OF",
    "OBJECTIVES",
    "DensityRun",
    "ObjectiveRun",
    "build_model",
    "compare_objectives",
    "label_density_experiment",
    "PrefixLMBatch",
    "Seq2SeqBatch",
    "Signal",
    "SpecialTokens",
    "batch_labels",
    "bayes_loss",
    "causal_lm_batch",
    "loss_fn",
    "make_batch",
    "masking_tradeoff",
    "masked_lm_batch",
    "objective_batches",
    "plot_comparison",
    "plot_density",
    "plot_masking_tradeoff",
    "predict_token",
    "prefix_lm_batch",
    "random_spans_noise_mask",
    "show_example",
    "signal",
    "span_corruption_batch",
    "span_corruption_reconstruct",
    "span_counts",
    "text_windows",
    "token_cross_entropy",
    "training_flops",
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


Batch = "tuple[torch.Tensor, torch.Tensor] | PrefixLMBatch | Seq2SeqBatch"


# ---------------------------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------------------------


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


def _check_fraction(name: str, value, *, open_low: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
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
    positions carry a training signal. That is the controlled experiment of chapter 6.
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
        or any(isinstance(p, bool) or not isinstance(p, (int, float)) or p < 0 for p in replace)
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
    if (
        isinstance(mean_span_length, bool)
        or not isinstance(mean_span_length, (int, float))
        or mean_span_length < 1
    ):
        raise ValueError(f"mean_span_length must be a number >= 1, got {mean_span_length!r}")
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
    seqs: torch.Tensor,
    *,
    prefix_len: int | None = None,
    generator: torch.Generator | None = None,
) -> PrefixLMBatch:
    """Prefix LM on seqs (B, N): inputs x = seqs[:, :-1]; positions >= prefix_len - 1 predict the next token.

    Tokens 0 .. prefix_len - 1 form the bidirectional prefix; the loss covers the suffix tokens
    seqs[:, prefix_len:], i.e. N - prefix_len targets per row. prefix_len None: uniform in [1, N - 1], one
    split per batch (the attention kernel takes one prefix length).
    """
    seqs = _check_seqs(seqs)
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
) -> Callable[[int], Batch]:
    """``step -> batch`` for `train`: the text windows of `step`, corrupted for `objective`.

    The randomness of the objective (masks, spans, split points) depends only on (seed, step), so a run
    is reproducible and different objectives can share the same text windows.
    """
    _check_objective(objective)
    if not callable(windows):
        raise TypeError(f"windows must be a callable step -> (B, N) token ids, got {type(windows).__name__}")

    def batch(step: int):
        return make_batch(objective, windows(step), special, generator=_step_generator(seed, step), **options)

    return batch


# ---------------------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------------------


def _ce(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE)
    return loss, int((labels != IGNORE).sum())


def causal_lm_loss(model: nn.Module, batch) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy (nats) over the labelled positions of a (x, y) batch, and their number."""
    x, y = batch
    return _ce(model(x), y)


masked_lm_loss = causal_lm_loss  # the same computation: the labels say where the loss is


def prefix_lm_loss(model: nn.Module, batch: PrefixLMBatch) -> tuple[torch.Tensor, int]:
    """Cross-entropy over the suffix of a `PrefixLMBatch`; the model must have ``config.mask == "prefix"``."""
    return _ce(model(batch.input_ids, prefix_len=batch.prefix_len), batch.labels)


def span_corruption_loss(model: nn.Module, batch: Seq2SeqBatch) -> tuple[torch.Tensor, int]:
    """Cross-entropy over every target (sentinels, span tokens, EOS) of a `Seq2SeqBatch`."""
    logits = model(batch.decoder_input_ids, encoder_input_ids=batch.encoder_input_ids)
    return _ce(logits, batch.labels)


_LOSSES = {
    "causal": causal_lm_loss,
    "masked": masked_lm_loss,
    "prefix": prefix_lm_loss,
    "span": span_corruption_loss,
}


def loss_fn(objective: str) -> Callable[[nn.Module, Batch], tuple[torch.Tensor, int]]:
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


def training_flops(model: nn.Module, loss: Callable, batch) -> int:
    """Matmul FLOPs of one forward + backward pass of ``loss(model, batch)``, counted by PyTorch.

    Attention runs through the dense reference kernel while counting, so its score and value products
    are included at full (unmasked) size for every objective alike. Gradients are discarded.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from anatomy.model import Attention

    configs = {id(m.config): m.config for m in model.modules() if isinstance(m, Attention)}
    saved = {k: c.attn_backend for k, c in configs.items()}
    try:
        for c in configs.values():
            c.attn_backend = "reference"
        with FlopCounterMode(display=False) as counter:
            value, _ = loss(model, batch)
            value.backward()
    finally:
        for k, c in configs.items():
            c.attn_backend = saved[k]
        model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


# ---------------------------------------------------------------------------------------------------------
# Exact Bayes-optimal losses on a first-order Markov source
# ---------------------------------------------------------------------------------------------------------


def _markov(source) -> tuple[np.ndarray, np.ndarray]:
    if getattr(source, "order", None) != 1 or not hasattr(source, "P"):
        raise ValueError("exact Bayes losses need a first-order anatomy.data.MarkovSource (order=1)")
    return np.asarray(source.P, dtype=np.float64), np.asarray(source.pi, dtype=np.float64)


def _bayes_next_token(T: np.ndarray, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """-log T[x_t, y_t] at every labelled position (flattened, in order)."""
    keep = (y != IGNORE).numpy()
    return -np.log(T[x.numpy()[keep], y.numpy()[keep]])


def _bayes_masked(T, pi, x, labels, special, rate, replace) -> np.ndarray:
    """Exact posterior of each target by forward-backward over the corruption process (see bayes_loss).

    All rows of the batch go through the recursions together (arrays (B, N, V)); the losses come out in
    the order of the labels, row by row.
    """
    V = T.shape[0]
    if special.n_text != V:
        raise ValueError(f"special.n_text ({special.n_text}) must equal the source's vocab_size ({V})")
    p_mask, p_rand, p_keep = replace
    xs, ls = x.numpy(), labels.numpy()
    B, N = xs.shape
    # emission e(o_t | x_t) summed over corruption types, and restricted to "t is a target"
    is_mask = (xs == special.mask_id)[..., None]  # (B, N, 1)
    match = np.zeros((B, N, V))
    visible = ~is_mask[..., 0]
    match[visible, xs[visible]] = 1.0  # one-hot of the observed token where it is not [MASK]
    e_tgt = np.where(is_mask, rate * p_mask, rate * p_keep * match + rate * p_rand / V)
    e_all = np.where(is_mask, rate * p_mask, (1 - rate) * match + e_tgt)
    alpha = np.empty((B, N, V))
    a = pi * e_all[:, 0]
    alpha[:, 0] = a / a.sum(1, keepdims=True)
    for t in range(1, N):
        a = (alpha[:, t - 1] @ T) * e_all[:, t]
        alpha[:, t] = a / a.sum(1, keepdims=True)
    beta = np.empty((B, N, V))
    beta[:, -1] = 1.0
    for t in range(N - 2, -1, -1):
        bb = (e_all[:, t + 1] * beta[:, t + 1]) @ T.T
        beta[:, t] = bb / bb.sum(1, keepdims=True)
    rows, cols = np.nonzero(ls != IGNORE)  # row-major: the order of the labels, row by row
    prior = np.where((cols == 0)[:, None], pi, alpha[rows, np.maximum(cols - 1, 0)] @ T)
    post = prior * e_tgt[rows, cols] * beta[rows, cols]
    picked = post[np.arange(len(rows)), ls[rows, cols]]
    return -np.log(picked / post.sum(1))


def _span_structure(enc: list[int], special: SpecialTokens):
    """(left neighbour, right neighbour) of each span, from one encoder input row (None at an edge)."""
    sentinels = {s: i for i, s in enumerate(special.sentinel_ids)}
    body = [t for t in enc if t != special.eos_id]
    neighbours = []
    for i, t in enumerate(body):
        if t in sentinels:
            left = body[i - 1] if i > 0 and body[i - 1] not in sentinels else None
            right = body[i + 1] if i + 1 < len(body) and body[i + 1] not in sentinels else None
            neighbours.append((left, right))
    return neighbours


def _bayes_span_row(T, pi, enc: list[int], tgt: list[int], special: SpecialTokens) -> list[float]:
    """-log P(target_j | encoder input, targets before j) for one row, exactly (see bayes_loss)."""
    V = T.shape[0]
    spans = _span_structure(enc, special)
    k = len(spans)
    text_tgt = [t for t in tgt if 0 <= t < special.n_text]
    M = len(text_tgt)
    if k == 0 or M < k:
        raise ValueError("a span-corruption row must have at least one span and one token per span")
    powers = [np.eye(V)]
    for _ in range(M + 1):
        powers.append(powers[-1] @ T)

    def to_right(m: int, right: int | None) -> np.ndarray:
        """P(the token m + 1 steps later is `right`), as a vector over the current token."""
        return np.ones(V) if right is None else powers[m + 1][:, right]

    # w[j][l]: total probability of span j having some content of length l, given its left token
    # (a vector over that left token, so the first span of a row can start from the stationary law).
    # G[j][R]: sum over compositions of R tokens into spans j..k-1 (each >= 1) of the product of w.
    def span_weight(j: int, length: int) -> np.ndarray:
        return to_right(length, spans[j][1])

    G = np.zeros((k + 1, M + 1))
    G[k, 0] = 1.0
    for j in range(k - 1, -1, -1):
        left = spans[j][0]
        for R in range(1, M + 1):
            total = 0.0
            for length in range(1, R + 1):
                if G[j + 1, R - length] == 0.0:
                    continue
                w = span_weight(j, length)
                start = w @ pi if left is None else w[left]
                total += start * G[j + 1, R - length]
            G[j, R] = total

    if not tgt or tgt[0] != special.sentinel_ids[0]:
        raise ValueError(f"targets must start with sentinel {special.sentinel_ids[0]}")
    losses = [0.0]  # the first sentinel is certain
    pos, R = 1, M  # R: span tokens not yet written
    for j in range(k):
        left, right = spans[j]
        prev, i = left, 0  # the token before the next one (None: the span starts the text)
        while True:
            # continue with x: step[x] * H[x], H[x] = sum_m P(right, m + 1 steps after x) G[j + 1, R - 1 - m]
            H = np.zeros(V)
            for m in range(R):
                if G[j + 1, R - 1 - m] != 0.0:
                    H += to_right(m, right) * G[j + 1, R - 1 - m]
            cont = (pi if prev is None else T[prev]) * H
            # end span j here (only after at least one token): the text goes on with `right`
            end = 0.0
            if i >= 1:
                end = (1.0 if right is None else T[prev, right]) * G[j + 1, R]
            Z = cont.sum() + end
            token = tgt[pos]
            pos += 1
            if 0 <= token < special.n_text:
                losses.append(-math.log(cont[token] / Z))
                prev, i, R = token, i + 1, R - 1
                continue
            expected = special.sentinel_ids[j + 1] if j + 1 < k else special.eos_id
            if token != expected:
                raise ValueError(f"target {pos - 1} should be {expected}, got {token}")
            losses.append(-math.log(end / Z))  # the next sentinel (or EOS) says: span j ended
            break
    return losses


def bayes_loss(
    objective: str,
    source,
    batch,
    special: SpecialTokens | None = None,
    *,
    rate: float = 0.15,
    replace: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> np.ndarray:
    """The Bayes-optimal loss (nats) at every target of `batch`, for text from a first-order Markov source.

    Returns float64 (n_targets,), in the order of the labels (row by row). Its mean is the loss of the
    best possible model for this batch; a trained model's loss minus it is the model's excess (a KL).

    causal, prefix: -log T[x_{t-1}, x_t]. masked: the posterior of each target given the corrupted input,
    by forward-backward over the hidden clean sequence with the corruption process as emission
    (`rate`, `replace` as in `masked_lm_batch`). It is exact when the corruption is independent per
    position (selection="bernoulli") and, whatever the selection, when every target is a [MASK]
    (replace=(1, 0, 0)); for exact-count selection with random/kept targets it treats positions as
    independent. With pure masking it reduces to science's formula: for a masked x between visible a
    (l steps left) and b (r steps right), P(x) proportional to (T^l)[a, x] (T^r)[x, b].
    span: T5's noise-span lengths are a uniformly random composition, so the number of tokens left in
    each span is unknown; the exact predictive of each target (text token, next sentinel or EOS) sums
    over all compositions consistent with the input and the targets so far, by dynamic programming.
    """
    _check_objective(objective)
    T, pi = _markov(source)
    if objective in ("causal", "masked"):
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise TypeError(f"a {objective} batch is (x, labels), got {type(batch).__name__}")
        x, y = batch
        if objective == "causal":
            return _bayes_next_token(T, x, y)
        if special is None:
            raise ValueError("masked needs special (a SpecialTokens)")
        return _bayes_masked(T, pi, x, y, special, _check_fraction("rate", rate), tuple(replace))
    if objective == "prefix":
        if not isinstance(batch, PrefixLMBatch):
            raise TypeError(f"a prefix batch is a PrefixLMBatch, got {type(batch).__name__}")
        return _bayes_next_token(T, batch.input_ids, batch.labels)
    if not isinstance(batch, Seq2SeqBatch):
        raise TypeError(f"a span batch is a Seq2SeqBatch, got {type(batch).__name__}")
    if special is None:
        raise ValueError("span needs special (a SpecialTokens)")
    if special.n_text != T.shape[0]:
        raise ValueError(
            f"special.n_text ({special.n_text}) must equal the source's vocab_size ({T.shape[0]})"
        )
    out: list[float] = []
    for enc, lab in zip(batch.encoder_input_ids.tolist(), batch.labels.tolist()):
        tgt = [t for t in lab if t != IGNORE]
        out.extend(_bayes_span_row(T, pi, enc, tgt, special))
    return np.asarray(out)


# ---------------------------------------------------------------------------------------------------------
# One question for every family: the distribution of one text token given the same visible context
# ---------------------------------------------------------------------------------------------------------


def _text_log_softmax(logits: torch.Tensor, n_text: int) -> torch.Tensor:
    return torch.log_softmax(logits[..., :n_text].float(), dim=-1)


@torch.no_grad()
def predict_token(
    model: nn.Module,
    objective: str,
    left: torch.Tensor,
    right: torch.Tensor | None,
    special: SpecialTokens,
) -> torch.Tensor:
    """log P(x_t = v | left context, right context) over text tokens v, for a model trained on `objective`.

    left: (E, L) the tokens before x_t; right: (E, R) the tokens after it, or None (R = 0: the task is
    continuation). Every family answers from exactly this information, each through its own interface:
    causal and prefix LMs by Bayes' rule over their left-to-right factorisation when R > 0 (scoring all
    candidates v with the right context after them: exact, but V times the inference compute); a masked
    LM by one [MASK] at x_t; an encoder-decoder by a sentinel at x_t (and, when R > 0, a second sentinel
    after the right context standing for the unseen rest of the text, as in T5's inputs, whose last span
    always ends the text) and the first token the decoder writes after that sentinel.
    Returns (E, n_text), normalised over text tokens.
    """
    _check_objective(objective)
    left = _check_seqs(left, "left", min_len=1)
    _check_text_ids(left, special, "left")
    E = left.shape[0]
    if right is not None:
        right = _check_seqs(right, "right", min_len=1)
        _check_text_ids(right, special, "right")
        if right.shape[0] != E:
            raise ValueError(
                f"left and right must have the same number of rows, got {E} and {right.shape[0]}"
            )
    R = 0 if right is None else right.shape[1]
    V = special.n_text
    was_training = model.training
    model.eval()
    try:
        if objective == "masked":
            parts = [left, torch.full((E, 1), special.mask_id)] + ([right] if R else [])
            logits = model(torch.cat(parts, 1))
            return _text_log_softmax(logits[:, left.shape[1]], V)
        if objective == "span":
            s0, s1 = special.sentinel_ids[:2]
            parts = [left, torch.full((E, 1), s0)] + ([right, torch.full((E, 1), s1)] if R else [])
            enc = torch.cat(parts + [torch.full((E, 1), special.eos_id)], 1)
            dec = torch.tensor([[special.decoder_start_id, s0]]).expand(E, 2)
            logits = model(dec, encoder_input_ids=enc)
            return _text_log_softmax(logits[:, 1], V)
        kwargs = {"prefix_len": left.shape[1]} if objective == "prefix" else {}
        if R == 0:
            logits = model(left, **kwargs)
            return _text_log_softmax(logits[:, -1], V)
        # Bayes' rule: log P(v | left) + sum_s log P(right_s | left, v, right_<s), for every candidate v.
        # The left context is the same for all V candidates and (causal, or a prefix of exactly L) its
        # keys and values do not depend on what follows, so it runs once, into a KV cache that every
        # candidate continuation then reuses: V times (1 + R) new positions instead of V times (L + 1 + R).
        L = left.shape[1]
        cache = model.new_cache(E, max_len=L + 1 + R)
        first = _text_log_softmax(model(left, cache, **kwargs)[:, -1], V)  # (E, V): log P(v | left)
        tail = torch.cat([torch.arange(V).repeat(E)[:, None], right.repeat_interleave(V, 0)], 1)
        rows = max(1, 8192 // (1 + R))
        scores = []
        for lo in range(0, E * V, rows):
            chunk = tail[lo : lo + rows]  # (b, 1 + R): one candidate, then the right context
            owners = torch.arange(lo, lo + chunk.shape[0]) // V
            shared = model.new_cache(chunk.shape[0], max_len=L + 1 + R)
            shared.claim(model.layers)  # filled by hand below with this model's own keys and values
            for layer in range(cache.n_layers):
                shared.update(layer, cache.keys(layer)[owners], cache.values(layer)[owners])
            shared.commit(left[owners])
            logp = _text_log_softmax(model(chunk[:, :R], shared, **kwargs), V)  # (b, R, V)
            rest = logp.gather(2, chunk[:, 1:, None])[..., 0].sum(1)
            scores.append(first[owners, chunk[:, 0]] + rest)
        joint = torch.cat(scores).view(E, V)
        return torch.log_softmax(joint, dim=-1)
    finally:
        model.train(was_training)


def token_cross_entropy(
    model: nn.Module,
    objective: str,
    windows: torch.Tensor,
    position: int | Sequence[int],
    special: SpecialTokens,
    *,
    right: int = 0,
    per_example: bool = False,
) -> float | torch.Tensor:
    """Mean -log P(x_t | x_<t, x_t+1..t+right) in nats over windows (E, N) and positions t.

    position: one t or several (each window is asked at each of them). right = 0: continuation (the next
    token from the left context alone); right > 0: infilling. When a causal model is asked for the
    continuation at several positions, one forward pass answers all of them. per_example: return the
    losses themselves, (E * len(positions),) float, instead of their mean (for standard errors).
    """
    if not isinstance(per_example, bool):
        raise TypeError(f"per_example must be True or False, got {per_example!r}")
    windows = _check_seqs(windows, "windows")
    positions = [position] if isinstance(position, (int, np.integer)) else list(position)
    if not positions:
        raise ValueError("position must be an int or a non-empty sequence of ints")
    for t in positions:
        _check_int("position", t, 1)
    _check_int("right", right, 0)
    if max(positions) + right >= windows.shape[1]:
        raise ValueError(f"position + right must be < N = {windows.shape[1]}, got {max(positions)} + {right}")
    if objective == "causal" and right == 0 and len(positions) > 1:
        _check_text_ids(windows, special, "windows")
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                logp = _text_log_softmax(model(windows[:, : max(positions)]), special.n_text)
        finally:
            model.train(was_training)
        idx = torch.tensor(positions)
        picked = logp[:, idx - 1].gather(2, windows[:, idx, None])[..., 0]  # (E, len(positions))
        return -picked.t().reshape(-1) if per_example else float(-picked.mean())
    losses = []
    for t in positions:
        left = windows[:, :t]
        rhs = windows[:, t + 1 : t + 1 + right] if right else None
        logp = predict_token(model, objective, left, rhs, special)
        losses.append(-logp.gather(1, windows[:, t : t + 1]))
    return torch.cat(losses)[:, 0] if per_example else float(torch.cat(losses).mean())


# ---------------------------------------------------------------------------------------------------------
# Chapter 6's controlled experiment: the same task, only the share of supervised positions changes
# ---------------------------------------------------------------------------------------------------------


@dataclass
class DensityRun:
    """Excess loss over the Bayes optimum during training, for each label fraction."""

    fractions: tuple[float, ...]
    steps: list[int]  # evaluation points (optimizer steps done)
    excess: dict[float, list[float]]  # fraction -> eval loss minus the exact Bayes loss (nats), per point
    labels: dict[float, list[int]]  # fraction -> labels seen so far, per point
    bayes: float  # the Bayes-optimal loss on the evaluation set (nats per token)
    flops_per_step: int  # counted FLOPs of one training step (the same for every fraction)

    def fit(self, fraction: float, start: float = 0.4) -> tuple[float, float]:
        """(a, b) of excess ~ a * steps**(-b), fitted in log-log on the points after `start` of the run."""
        s = np.asarray(self.steps[1:], dtype=float)
        e = np.asarray(self.excess[fraction][1:], dtype=float)
        keep = (s >= start * s[-1]) & (e > 0)
        b, log_a = np.polyfit(np.log(s[keep]), np.log(e[keep]), 1)
        return float(np.exp(log_a)), float(-b)

    def steps_to_reach(self, fraction: float, level: float) -> float:
        """Steps the `fraction` run needs to reach excess `level`, from its power-law fit."""
        a, b = self.fit(fraction)
        return float((a / level) ** (1.0 / b))

    def upto(self, step: int) -> DensityRun:
        """The same runs, cut at `step` (an evaluation point): what a run of `step` steps would have given.

        Exact, because the learning rate is constant after a warm-up whose length does not depend on the
        number of steps (:func:`label_density_experiment`), so the first `step` steps of a longer run are
        a run of `step` steps.
        """
        if step not in self.steps:
            raise ValueError(f"step must be one of the evaluation points {self.steps}, got {step!r}")
        n = self.steps.index(step) + 1
        return replace(self, steps=self.steps[:n], excess={f: e[:n] for f, e in self.excess.items()},
                       labels={f: v[:n] for f, v in self.labels.items()})

    def compute_multiplier(self, fraction: float, reference: float = 1.0) -> float:
        """How many times more steps (= compute) `fraction` needs than `reference` for the same excess.

        The level is the excess the `fraction` run reaches at its last step (from its fit); both runs
        have the same cost per step, so the ratio of steps is the ratio of compute.
        """
        level = self.fit(fraction)[0] * self.steps[-1] ** (-self.fit(fraction)[1])
        return self.steps[-1] / self.steps_to_reach(reference, level)


def label_density_experiment(
    source,
    fractions: Sequence[float] = (1.0, 0.5, 0.15),
    *,
    config=None,
    steps: int = 300,
    batch_size: int = 32,
    seq_len: int = 64,
    lr: float = 3e-3,
    eval_every: int = 20,
    n_eval: int = 64,
    warmup: int = 10,
    seed: int = 0,
    progress: bool = False,
) -> DensityRun:
    """Train one causal LM per label fraction on a Markov source; everything else is identical.

    Same initial weights, same text batches, same steps and FLOPs; only the share of positions whose
    next-token loss is kept differs. The learning rate is constant after `warmup` steps (a number of steps,
    not a share of the run), so every point of a curve is comparable with every point of another (no run is
    annealed earlier than another) and the first k steps of a run are a run of k steps
    (:meth:`DensityRun.upto`). Returns the
    excess over the exact Bayes-optimal loss on a fixed evaluation sample.
    """
    from anatomy.model import Config, Transformer
    from anatomy.train import train

    T, _ = _markov(source)
    V = T.shape[0]
    fractions = tuple(_check_fraction("fraction", f) for f in fractions)
    _check_int("steps", steps, 1)
    _check_int("warmup", warmup, 0)
    config = config or Config(
        vocab_size=V, d_model=32, n_layers=2, n_heads=4, max_seq_len=seq_len, mlp="gelu", pos="learned"
    )
    eval_batch = causal_lm_batch(source.sample(n_eval, seq_len + 1, _step_generator(seed, -1)))
    bayes = float(bayes_loss("causal", source, eval_batch).mean())

    def eval_fn(model: nn.Module) -> dict[str, float]:
        return {"excess": causal_lm_loss(model, eval_batch)[0].item() - bayes}

    texts: dict[int, torch.Tensor] = {}  # every fraction trains on the same text: sample it once per step

    def text(step: int) -> torch.Tensor:
        if step not in texts:
            texts[step] = source.sample(batch_size, seq_len + 1, _step_generator(seed, step))
        return texts[step]

    excess, labels, eval_steps, flops = {}, {}, [], 0
    for f in fractions:
        torch.manual_seed(seed)
        model = Transformer(config)

        def batches(step: int, f: float = f):
            return causal_lm_batch(text(step), label_fraction=f, generator=_step_generator(seed + 1, step))

        if not flops:
            flops = training_flops(model, causal_lm_loss, batches(0))
        hist = train(
            model,
            batches,
            steps=steps,
            lr=lr,
            warmup=warmup,
            schedule="constant",
            loss_fn=causal_lm_loss,
            eval_fn=eval_fn,
            eval_every=eval_every,
            progress=progress,
            seed=seed,
        )
        eval_steps = [s for s, _ in hist.evals]
        excess[f] = [r["excess"] for _, r in hist.evals]
        seen = [0] + hist.tokens
        labels[f] = [seen[s] for s in eval_steps]
    return DensityRun(fractions, eval_steps, excess, labels, bayes, flops)


# ---------------------------------------------------------------------------------------------------------
# Chapter 6's comparison across objectives at equal compute
# ---------------------------------------------------------------------------------------------------------


@dataclass
class ObjectiveRun:
    """One family trained with its objective, and its answers to the two shared questions."""

    name: str
    objective: str
    options: dict
    steps: int
    flops_per_step: int
    params: int  # all parameters (an encoder-decoder has two stacks)
    targets_seen: int  # loss-carrying positions over the whole run
    eval_flops: list[int]  # training FLOPs at each evaluation of the continuation loss (after step 0)
    continuation_curve: list[float]  # continuation loss (nats per token) at each evaluation
    continuation: float  # final: -log P(x_t | x_<t)
    infill: float  # final: -log P(x_t | x_<t, x_t+1..t+R)
    model: nn.Module | None = None
    infill_losses: list[float] | None = None  # the per-window infilling losses whose mean is `infill`

    @property
    def flops(self) -> int:
        return self.steps * self.flops_per_step


FAMILY_OF = {"causal": "causal", "masked": "bidirectional", "prefix": "prefix", "span": "encdec"}

DEFAULT_RUNS: dict[str, tuple[str, dict]] = {
    "decoder (causal LM)": ("causal", {}),
    "decoder, 15% of labels": ("causal", {"label_fraction": 0.15}),
    "encoder (masked LM)": ("masked", {}),
    "prefix LM": ("prefix", {}),
    "encoder-decoder (span corruption)": ("span", {}),
}


def build_model(objective: str, config) -> nn.Module:
    """The family that trains with `objective`: decoder, encoder, prefix LM or encoder-decoder."""
    from anatomy.model import EncoderDecoder, Transformer

    _check_objective(objective)
    if objective == "span":
        return EncoderDecoder(replace(config, mask="causal"))
    return Transformer(replace(config, mask=FAMILY_OF[objective]))


def compare_objectives(
    train_ids: torch.Tensor,
    eval_windows: torch.Tensor,
    special: SpecialTokens,
    config,
    *,
    runs: dict[str, tuple[str, dict]] | None = None,
    flops_budget: int | None = None,
    steps: int = 200,
    batch_size: int = 16,
    seq_len: int = 64,
    lr: float = 3e-3,
    positions: Sequence[int] | None = None,
    infill_position: int | None = None,
    right: int = 8,
    n_curve: int = 8,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, ObjectiveRun]:
    """Train one model per run on the same text windows at (nearly) equal compute; ask each the same.

    runs: name -> (objective, batch options), default `DEFAULT_RUNS`: the four families, plus a decoder
    that keeps the loss on only 15% of positions (the same density as BERT, the causal task unchanged).
    Compute: counted training FLOPs (`training_flops`). flops_budget None: `steps` steps of the first run;
    each run gets round(budget / its FLOPs per step) steps. Every model starts from the same seed, sees
    the same text windows in the same order, and uses the same optimiser settings.
    Evaluation (`predict_token`) on eval_windows (E, N): the continuation loss -log P(x_t | x_<t) averaged
    over `positions` (default: the second half of the window) and the infilling loss
    -log P(x_t | x_<t, the next `right` tokens) at t = `infill_position` (default N - right - 4), in nats
    per token. The continuation loss is also tracked during training (`n_curve` points after step 0, the
    untrained model is not evaluated; the last one is the final value).
    """
    from anatomy.train import train

    runs = DEFAULT_RUNS if runs is None else runs
    N = eval_windows.shape[1]
    positions = list(range(N // 2, N)) if positions is None else list(positions)
    infill_position = N - right - 4 if infill_position is None else infill_position
    if not runs:
        raise ValueError("runs must name at least one (objective, options) pair")
    for obj, _ in runs.values():
        _check_objective(obj)
    windows = text_windows(train_ids, batch_size, seq_len, seed=seed)

    def batches(obj: str, options: dict):
        return objective_batches(obj, windows, special, seed=seed, **options)

    per_step = {}
    for name, (obj, options) in runs.items():
        torch.manual_seed(seed)
        per_step[name] = training_flops(build_model(obj, config), loss_fn(obj), batches(obj, options)(0))
    if flops_budget is None:
        _check_int("steps", steps, 1)
        flops_budget = steps * per_step[next(iter(runs))]
    results = {}
    for name, (obj, options) in runs.items():
        n_steps = max(1, round(flops_budget / per_step[name]))
        every = max(1, n_steps // n_curve)
        torch.manual_seed(seed)
        model = build_model(obj, config)

        def eval_fn(m: nn.Module, obj: str = obj) -> dict[str, float]:
            return {"continuation": token_cross_entropy(m, obj, eval_windows, positions, special)}

        hist = train(
            model,
            batches(obj, options),
            steps=n_steps,
            lr=lr,
            loss_fn=loss_fn(obj),
            eval_fn=eval_fn,
            eval_every=every,
            eval_at_start=False,  # the curves start after training steps
            progress=progress,
            seed=seed,
        )
        infill = token_cross_entropy(model, obj, eval_windows, infill_position, special, right=right,
                                     per_example=True)
        results[name] = ObjectiveRun(
            name=name,
            objective=obj,
            options=dict(options),
            steps=n_steps,
            flops_per_step=per_step[name],
            params=sum(p.numel() for p in model.parameters()),
            targets_seen=hist.tokens[-1],
            eval_flops=[s * per_step[name] for s, _ in hist.evals],
            continuation_curve=[r["continuation"] for _, r in hist.evals],
            continuation=hist.evals[-1][1]["continuation"],
            infill=float(infill.mean()),
            model=model,
            infill_losses=infill.tolist(),
        )
    return results


# ---------------------------------------------------------------------------------------------------------
# Showing a batch as text
# ---------------------------------------------------------------------------------------------------------


def show_example(
    objective: str,
    batch,
    special: SpecialTokens,
    decode: Callable[[list[int]], str],
    row: int = 0,
    *,
    mask_symbol: str = "█",
) -> tuple[str, str]:
    """(what the model reads, what it is trained to predict) for one row of a batch, as text.

    ``[MASK]`` shows as `mask_symbol`, sentinels as ``<0>``, ``<1>`` ..., EOS as ``</s>``; positions
    without a loss show as ``·`` in the target line of a masked or prefix batch.
    """
    _check_objective(objective)
    sentinel_names = {s: f"<{i}>" for i, s in enumerate(special.sentinel_ids)}

    def text(ids: list[int], hide: list[bool] | None = None) -> str:
        out = []
        for i, t in enumerate(ids):
            if hide is not None and hide[i]:
                out.append("·")
            elif t == special.mask_id:
                out.append(mask_symbol)
            elif t in sentinel_names:
                out.append(sentinel_names[t])
            elif t == special.eos_id:
                out.append("</s>")
            elif 0 <= t < special.n_text:
                out.append(decode([t]))
            else:
                out.append("?")
        return "".join(out)

    if objective == "span":
        labels = [t for t in batch.labels[row].tolist() if t != IGNORE]
        return text(batch.encoder_input_ids[row].tolist()), text(labels)
    if objective == "prefix":
        x, y = batch.input_ids[row].tolist(), batch.labels[row].tolist()
        prefix = text(x[: batch.prefix_len])
        return prefix + " | " + text(x[batch.prefix_len :]), text(
            [max(t, 0) for t in y], [t == IGNORE for t in y]
        )
    x, y = batch[0][row].tolist(), batch[1][row].tolist()
    return text(x), text([max(t, 0) for t in y], [t == IGNORE for t in y])


def masking_tradeoff(
    source,
    rates: Sequence[float],
    *,
    seqs: torch.Tensor | None = None,
    n: int = 16,
    seq_len: int = 64,
    replace=(0.8, 0.1, 0.1),
    seed: int = 0,
) -> dict[str, list[float]]:
    """Exact Bayes-optimal masked-LM loss per target and per token of text, for each masking rate.

    More masking gives more targets per sequence, but each target sees less context and is harder.
    Bernoulli selection (so the Bayes loss is exact with 80/10/10), on `seqs` (n, N) from the source or
    n fresh sequences of seq_len. Returns lists aligned with `rates`:
    "per_target" (nats), "targets_per_token", and "per_token" = their product (nats of optimal loss per
    token of text: how much is left to predict in total).
    """
    _markov(source)
    special = SpecialTokens(source.vocab_size)
    if seqs is None:
        seqs = source.sample(n, seq_len, _step_generator(seed, -2))
    out: dict[str, list[float]] = {"per_target": [], "targets_per_token": [], "per_token": []}
    for rate in rates:
        # the same generator state for every rate: the masks are nested (a position masked at one rate is
        # masked at every higher rate), so the curves differ by the rate, not by the luck of the draw
        batch = masked_lm_batch(
            seqs,
            special,
            rate=rate,
            replace=replace,
            selection="bernoulli",
            generator=_step_generator(seed, -3),
        )
        losses = bayes_loss("masked", source, batch, special, rate=rate, replace=replace)
        share = len(losses) / seqs.numel()
        out["per_target"].append(float(losses.mean()))
        out["targets_per_token"].append(share)
        out["per_token"].append(float(losses.mean()) * share)
    return out


# ---------------------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------------------


def plot_density(run: DensityRun):
    """Excess loss over the Bayes optimum against training FLOPs (left) and against labels seen (right)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    shades = {1.0: "#0072B2", 0.5: "#56B4E9", 0.15: "#9ecae1"}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    steps = np.asarray(run.steps[1:], dtype=float)
    for f in run.fractions:
        color = shades.get(f, None)
        label = f"{f:.0%} of positions supervised"
        ex = np.asarray(run.excess[f][1:])
        ax1.loglog(steps * run.flops_per_step / 1e9, ex, "o", ms=3, color=color, alpha=0.7)
        a, b = run.fit(f)
        fit_s = steps[steps >= 0.4 * steps[-1]]
        ax1.loglog(fit_s * run.flops_per_step / 1e9, a * fit_s ** (-b), "-", color=color, label=label)
        ax2.loglog(np.asarray(run.labels[f][1:]), ex, "o-", ms=3, color=color, label=label)
    low = min(run.fractions)
    if 1.0 in run.fractions and low < 1.0:
        a, b = run.fit(low)
        level = a * run.steps[-1] ** (-b)
        reach = run.steps_to_reach(1.0, level)
        ax1.axhline(level, color="#999999", lw=0.8, ls="--")
        ax1.annotate(
            "",
            xy=(reach * run.flops_per_step / 1e9, level),
            xytext=(run.steps[-1] * run.flops_per_step / 1e9, level),
            arrowprops={"arrowstyle": "<->", "color": "#444444"},
        )
        ax1.text(
            np.sqrt(reach * run.steps[-1]) * run.flops_per_step / 1e9,
            level * 1.08,
            f"x{run.compute_multiplier(low):.1f} compute",
            ha="center",
            va="bottom",
            fontsize=9,
        )
    ax1.set_xlabel("training compute (GFLOPs, counted)")
    ax1.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax1.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax1.xaxis.set_minor_formatter(NullFormatter())
    ax1.set_ylabel("excess loss over the Bayes optimum (nats per token)")
    ax1.set_title("Equal compute: the same batches, fewer labels")
    ax2.set_xlabel("labels seen (positions that carried a loss)")
    ax2.set_title("Equal labels")
    ax1.legend(loc="lower left")
    fig.tight_layout()
    return fig


_RUN_STYLE = {
    "causal": ("#0072B2", "-"),
    "causal15": ("#0072B2", ":"),
    "masked": ("#D55E00", "-"),
    "prefix": ("#009E73", "-"),
    "span": ("#CC79A7", "-"),
}


def _style(run: ObjectiveRun) -> tuple[str, str]:
    key = (
        "causal15"
        if run.objective == "causal" and run.options.get("label_fraction", 1.0) < 1
        else run.objective
    )
    return _RUN_STYLE[key]


def plot_comparison(results: dict[str, ObjectiveRun], baseline: float | None = None):
    """Continuation loss during training against counted FLOPs (left); final continuation and infilling
    losses (right). baseline: the loss of a model that ignores the context (e.g. the unigram entropy)."""
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1.1, 1]})
    for name, run in results.items():
        color, ls = _style(run)
        ax1.plot(
            np.asarray(run.eval_flops) / 1e9,
            run.continuation_curve,
            ls,
            marker="o",
            ms=3,
            color=color,
            label=name,
        )
    if baseline is not None:
        ax1.axhline(baseline, color="#777777", lw=0.8, ls="--")
        ax1.text(
            ax1.get_xlim()[1],
            baseline,
            "ignores context ",
            va="top",
            ha="right",
            fontsize=9,
            color="#555555",
        )
    ax1.set_xlabel("training compute (GFLOPs, counted)")
    ax1.set_ylabel("continuation loss (nats per character)")
    ax1.set_title("Predict the next character, left context only")
    ax1.legend(fontsize=8.5)
    names = list(results)
    y = np.arange(len(names))[::-1]
    for yi, n in zip(y, names):
        r = results[n]
        color = _style(r)[0]
        ax2.plot([r.infill, r.continuation], [yi, yi], "-", color="#cccccc", lw=2, zorder=1)
        ax2.plot(r.continuation, yi, "o", ms=8, color=color, zorder=2)
        ax2.plot(r.infill, yi, "D", ms=7, mfc="white", mec=color, mew=2, zorder=2)
    ax2.plot([], [], "o", color="#555555", label="continuation")
    ax2.plot([], [], "D", mfc="white", mec="#555555", mew=2, label="infilling")
    if baseline is not None:
        ax2.axvline(baseline, color="#777777", lw=0.8, ls="--")
    ax2.set_yticks(y, names, fontsize=9)
    ax2.set_xlabel("held-out loss (nats per character, lower is better)")
    ax2.set_title("Both questions, at the end of training")
    ax2.legend(fontsize=8.5, loc="lower left")
    fig.tight_layout()
    return fig


def plot_masking_tradeoff(
    rates: Sequence[float], tradeoff: dict[str, list[float]], rate: float, example: str
):
    """One frame of the masking-rate explorer: an example masked at `rate`, and the exact trade-off curves."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(9, 4.6))
    top = fig.add_axes((0.04, 0.80, 0.92, 0.17))
    top.axis("off")
    top.text(0.0, 0.5, example, family="monospace", fontsize=10, va="center", ha="left")
    top.set_title(f"masking rate {rate:.0%}: the encoder sees", loc="left", fontsize=10)
    ax1 = fig.add_axes((0.08, 0.12, 0.38, 0.56))
    ax2 = fig.add_axes((0.58, 0.12, 0.38, 0.56))
    i = list(rates).index(rate)
    ax1.plot(rates, tradeoff["per_target"], "o-", color="#D55E00")
    ax1.plot([rate], [tradeoff["per_target"][i]], "o", ms=11, mfc="none", mec="#222222")
    ax1.set_xlabel("masking rate")
    ax1.set_ylabel("optimal loss per target (nats)")
    ax1.set_title("each target gets harder", fontsize=10)
    ax2.plot(rates, tradeoff["targets_per_token"], "o-", color="#D55E00", label="targets per token")
    ax2.plot([rate], [tradeoff["targets_per_token"][i]], "o", ms=11, mfc="none", mec="#222222")
    ax2.set_xlabel("masking rate")
    ax2.set_ylabel("targets per token of text")
    ax2.set_title("but there are more of them", fontsize=10)
    return fig
