"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a cheap draft proposes tokens, the target
checks them all in one forward pass, and a rejection rule keeps exactly the target's output distribution.

One round, with context x and ``gamma`` drafted tokens d_1..d_gamma drawn from the draft's q:

1. the target runs [last token of x, d_1, ..., d_gamma] in one call on its KV cache and gets p_1..p_{gamma+1};
2. d_i is accepted with probability min(1, p_i(d_i) / q_i(d_i)), in order, until the first rejection;
3. at a rejection, the next token is drawn from the residual norm(max(0, p_i - q_i)), and the round ends;
   if all gamma are accepted, one bonus token is drawn from p_{gamma+1};
4. both KV caches are rolled back (``KVCache.truncate``) to the accepted tokens.

At temperature 0, p and q are one-hot at their argmax: a draft token is accepted iff it is the target's
argmax, and the output is token for token the target's greedy output. All randomness goes through a small
interface (``categorical``, ``bernoulli``), so :func:`enumerate_distribution` can follow every random branch
of the real sampler and compute its output distribution exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn

from anatomy._checks import (
    check_float,
    check_generator,
    check_instance,
    check_int,
    check_positive_int,
    check_tensor,
    is_int,
    is_number,
)
from anatomy.cache import KVCache
from anatomy.model import Transformer

__all__ = [
    "RULES",
    "ModelDrafter",
    "NgramDrafter",
    "ScriptedRandom",
    "SpeculativeOutput",
    "TorchRandom",
    "acceptance_probability",
    "dict_total_variation",
    "enumerate_distribution",
    "expected_speedup",
    "expected_tokens_per_call",
    "layer_draft",
    "residual_distribution",
    "sequence_distribution",
    "speculative_generate",
    "step_costs",
    "verify",
]

RULES = ("leviathan", "match", "argmax")


# ---------------------------------------------------------------------------------------------------------
# Randomness: real (torch) or scripted (to enumerate every branch)
# ---------------------------------------------------------------------------------------------------------


class TorchRandom:
    """Draws with a torch.Generator; a certain event (one-hot, probability 0 or 1) draws nothing."""

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = check_generator("generator", generator)

    def categorical(self, probs: torch.Tensor) -> int:
        support = torch.nonzero(probs > 0).flatten()
        if support.numel() == 1:
            return int(support[0])
        return int(torch.multinomial(probs.float(), 1, generator=self.generator))

    def bernoulli(self, prob: float) -> bool:
        if prob >= 1.0:
            return True
        if prob <= 0.0:
            return False
        return bool(torch.rand((), generator=self.generator, dtype=torch.float64) < prob)


class _Branch(Exception):
    """Raised by ScriptedRandom when the script runs out: the options at this choice, with probabilities."""

    def __init__(self, options: list[tuple[int, float]]) -> None:
        super().__init__(f"{len(options)} options")
        self.options = options


class ScriptedRandom:
    """Makes the choices of a script (a list of outcomes), multiplying up their probabilities in ``prob``;
    raises _Branch at the first choice beyond the script. Used by :func:`enumerate_distribution`."""

    def __init__(self, script: Sequence[int]) -> None:
        if isinstance(script, (str, bytes)) or not isinstance(script, Sequence):
            raise TypeError(f"script must be a sequence of ints, got {type(script).__name__}")
        self.script, self.pos, self.prob = list(script), 0, 1.0
        if not all(is_int(x) and x >= 0 for x in self.script):  # fast path; the loop names the bad one
            for i, x in enumerate(self.script):
                check_int(f"script[{i}]", x, lo=0)

    def _choose(self, options: list[tuple[int, float]]) -> int:
        if self.pos == len(self.script):
            raise _Branch(options)
        choice = self.script[self.pos]
        self.pos += 1
        self.prob *= dict(options)[choice]
        return choice

    def categorical(self, probs: torch.Tensor) -> int:
        support = torch.nonzero(probs > 0).flatten().tolist()
        if len(support) == 1:
            return support[0]
        p = probs.double()
        return self._choose([(i, float(p[i])) for i in support])

    def bernoulli(self, prob: float) -> bool:
        if prob >= 1.0:
            return True
        if prob <= 0.0:
            return False
        return bool(self._choose([(1, float(prob)), (0, 1.0 - float(prob))]))


# ---------------------------------------------------------------------------------------------------------
# The acceptance rule
# ---------------------------------------------------------------------------------------------------------


def _check_pq(p, q) -> None:
    """p and q: float tensors of the same shape (V,)."""
    check_tensor("p", p, kind="float", dim=1)
    check_tensor("q", q, kind="float", dim=1)
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape (V,), got p {tuple(p.shape)}, q {tuple(q.shape)}")


def acceptance_probability(p: torch.Tensor, q: torch.Tensor, token: int) -> float:
    """min(1, p(token) / q(token)) for one position (p, q: (V,) probabilities; q(token) > 0)."""
    _check_pq(p, q)
    check_int("token", token, lo=0, hi=p.shape[0] - 1)
    qt = float(q[token])
    if qt <= 0:
        raise ValueError(f"the draft proposed token {token} with probability {qt}; it must be > 0")
    return min(1.0, float(p[token]) / qt)


def residual_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)): where to draw the replacement after a rejection (p if p == q everywhere)."""
    _check_pq(p, q)
    r = torch.clamp(p.double() - q.double(), min=0.0)
    s = r.sum()
    return r / s if s > 0 else p.double()


def verify(
    p: torch.Tensor, q: torch.Tensor | None, drafts: Sequence[int], rng, rule: str = "leviathan"
) -> tuple[int, int]:
    """Check drafted tokens against the target: p (k+1, V) target probabilities at the k drafted positions
    and one more, q (k, V) the draft's. Returns (number accepted, the next token after them).

    rule "leviathan": accept with min(1, p/q), resample from the residual (exact: the output has p's law).
    rule "match": accept iff the draft token equals an independent draw from p, else emit that draw
    (also exact, but it accepts with probability sum p*q instead of sum min(p, q)).
    rule "argmax": accept iff the draft token is p's argmax, else draw from p. This is the greedy rule;
    with sampling it is NOT exact (kept to show what the exact rules prevent).
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if isinstance(drafts, (str, bytes)) or not hasattr(drafts, "__len__"):
        raise TypeError(f"drafts must be a sequence of token ids, got {type(drafts).__name__}")
    check_tensor("p", p, kind="float")
    k = len(drafts)
    if p.dim() != 2 or p.shape[0] != k + 1:
        raise ValueError(f"p must be (k + 1, V) = ({k + 1}, V) for {k} drafted tokens, got {tuple(p.shape)}")
    for i, x in enumerate(drafts):
        check_int(f"drafts[{i}]", x, lo=0, hi=p.shape[1] - 1)
    if q is not None:
        check_tensor("q", q, kind="float")
    if k and (q is None or tuple(q.shape) != (k, p.shape[1])):
        got = None if q is None else tuple(q.shape)
        raise ValueError(f"q must be (k, V) = ({k}, {p.shape[1]}), got {got}")
    for i, x in enumerate(drafts):
        if rule == "leviathan":
            if rng.bernoulli(acceptance_probability(p[i], q[i], x)):
                continue
            return i, rng.categorical(residual_distribution(p[i], q[i]))
        if rule == "match":
            y = rng.categorical(p[i])
            if y == x:
                continue
            return i, y
        if int(p[i].argmax()) == x:  # rule == "argmax"
            continue
        return i, rng.categorical(p[i])
    return k, rng.categorical(p[k])


def _probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """(n, V) logits -> float64 probabilities; temperature 0 gives one-hot rows at the argmax."""
    if temperature == 0:
        out = torch.zeros(logits.shape, dtype=torch.float64)
        out[torch.arange(logits.shape[0]), logits.argmax(-1)] = 1.0
        return out
    return torch.softmax(logits.double() / temperature, dim=-1)


# ---------------------------------------------------------------------------------------------------------
# Drafters
# ---------------------------------------------------------------------------------------------------------


def _common_prefix(cache: KVCache, ids: torch.Tensor) -> int:
    """Length of the longest common prefix of the cached tokens and ids (1, N)."""
    n = min(len(cache), ids.shape[1])
    if n == 0:
        return 0
    same = (cache.tokens[0, :n] == ids[0, :n].to(cache.device)).long()
    return int(same.cumprod(0).sum())


def _sync(cache: KVCache, ids: torch.Tensor) -> None:
    """Roll the cache back to the part it shares with ids, keeping at least the last token of ids to run."""
    cache.truncate(min(_common_prefix(cache, ids), ids.shape[1] - 1))


class ModelDrafter:
    """A draft model with its own KV cache, kept in step with the context (rolled back after rejections)."""

    def __init__(self, model: nn.Module, max_len: int) -> None:
        if not isinstance(model, nn.Module) or not hasattr(model, "new_cache"):
            raise TypeError(f"model must be an anatomy model (with new_cache), got {type(model).__name__}")
        self.model = model
        self.cache = model.new_cache(max_len=max_len)
        self.calls = 0

    @torch.inference_mode()
    def propose(self, ids: torch.Tensor, k: int, temperature: float, rng) -> tuple[list[int], torch.Tensor]:
        """k tokens drawn one by one from the draft after ids (1, N), and their distributions q (k, V)."""
        _sync(self.cache, ids)
        feed = ids[:, len(self.cache) :]
        tokens, qs = [], []
        for _ in range(k):
            logits = self.model(feed, cache=self.cache, logits_to_keep=1)[:, -1]
            self.calls += 1
            q = _probs(logits, temperature)[0]
            x = rng.categorical(q)
            tokens.append(x)
            qs.append(q)
            feed = torch.tensor([[x]], device=ids.device)
        return tokens, torch.stack(qs) if qs else torch.empty(0, 0, dtype=torch.float64)

    @torch.inference_mode()
    def greedy_tokens(self, ids: torch.Tensor, k: int) -> list[int]:
        """The k tokens :meth:`propose` drafts at temperature 0 (the draft's argmaxes), without building q."""
        _sync(self.cache, ids)
        feed = ids[:, len(self.cache) :]
        tokens = []
        for _ in range(k):
            nxt = self.model(feed, cache=self.cache, logits_to_keep=1)[:, -1].argmax(-1, keepdim=True)
            self.calls += 1
            tokens.append(int(nxt))
            feed = nxt
        return tokens


class NgramDrafter:
    """Prompt lookup: find the latest earlier occurrence of the context's last n tokens (n from ``max_n``
    down to ``min_n``) and propose the tokens that followed it. Costs no model call. q is one-hot."""

    def __init__(self, vocab_size: int, max_n: int = 3, min_n: int = 1) -> None:
        check_positive_int("vocab_size", vocab_size)
        check_positive_int("max_n", max_n)
        check_positive_int("min_n", min_n)
        if not 1 <= min_n <= max_n:
            raise ValueError(f"need 1 <= min_n <= max_n, got min_n={min_n}, max_n={max_n}")
        self.vocab_size, self.max_n, self.min_n = vocab_size, max_n, min_n
        self.calls = 0

    def lookup(self, seq: list[int], k: int) -> list[int]:
        for n in range(self.max_n, self.min_n - 1, -1):
            if len(seq) <= n:
                continue
            tail = seq[-n:]
            for start in range(len(seq) - n - 1, -1, -1):  # latest match first, not the tail itself
                if seq[start : start + n] == tail:
                    return seq[start + n : start + n + k]
        return []

    def greedy_tokens(self, seq: list[int] | torch.Tensor, k: int) -> list[int]:
        """What :meth:`propose` drafts (the same at any temperature), from the tokens as a list or (1, N)."""
        return self.lookup(seq[0].tolist() if isinstance(seq, torch.Tensor) else seq, k)

    def propose(self, ids: torch.Tensor, k: int, temperature: float, rng) -> tuple[list[int], torch.Tensor]:
        tokens = self.lookup(ids[0].tolist(), k)
        q = torch.zeros(len(tokens), self.vocab_size, dtype=torch.float64)
        q[torch.arange(len(tokens)), torch.tensor(tokens, dtype=torch.long)] = 1.0
        return tokens, q


def layer_draft(model: Transformer, layers: int | Sequence[int]) -> Transformer:
    """A draft made of some of ``model``'s own blocks (the first ``layers`` ones, or the given indices), its
    embedding, final norm and head. It shares those modules with ``model`` (no copy, no training)."""
    if not isinstance(model, Transformer):
        raise TypeError(f"model must be an anatomy Transformer, got {type(model).__name__}")
    n = model.config.n_layers
    if is_int(layers):
        idx = list(range(layers))
    elif hasattr(layers, "__iter__") and not isinstance(layers, (str, bytes)):
        idx = list(layers)
        for j, i in enumerate(idx):
            check_int(f"layers[{j}]", i)
        idx = [int(i) for i in idx]
    else:
        raise TypeError(f"layers must be an int or a sequence of ints, got {layers!r}")
    if not idx or any(not 0 <= i < n for i in idx) or len(set(idx)) != len(idx):
        raise ValueError(f"layers must select between 1 and {n} distinct blocks of the model, got {layers!r}")
    cfg = replace(model.config, n_layers=len(idx))
    with torch.device("meta"):
        draft = Transformer(cfg)
    for name, child in model.named_children():
        setattr(draft, name, child)
    draft.layers = nn.ModuleList(model.layers[i] for i in idx)
    for name, value in vars(model).items():  # plain attributes, e.g. a RoPE table
        if not name.startswith("_") and name not in ("config", "training"):
            setattr(draft, name, value)
    draft.config = cfg
    return draft.eval()


# ---------------------------------------------------------------------------------------------------------
# The sampler
# ---------------------------------------------------------------------------------------------------------


@dataclass
class SpeculativeOutput:
    """What :func:`speculative_generate` returns: the ids and what happened, round by round."""

    ids: torch.Tensor  # (1, N + new)
    n_new: int
    drafted: list[int] = field(default_factory=list)  # per round: tokens proposed
    accepted: list[int] = field(default_factory=list)  # per round: tokens accepted
    beta: list[float] = field(default_factory=list)  # per verified position: sum_x min(p(x), q(x))
    target_calls: int = 0
    draft_calls: int = 0

    @property
    def rounds(self) -> int:
        return len(self.drafted)

    @property
    def acceptance_rate(self) -> float:
        """Accepted / drafted tokens."""
        return sum(self.accepted) / max(1, sum(self.drafted))

    @property
    def alpha(self) -> float:
        """Leviathan et al.'s alpha = E[beta], beta = sum_x min(p(x), q(x)) at each position the target
        checked on the accepted path (at temperature 0: 1 if the argmaxes agree, else 0)."""
        return sum(self.beta) / max(1, len(self.beta))

    @property
    def tokens_per_call(self) -> float:
        """New tokens per target call (plain decoding: 1)."""
        return self.n_new / max(1, self.target_calls)


def speculative_generate(
    target: Transformer,
    draft,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    gamma: int = 4,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    rule: str = "leviathan",
    eos_token_id: int | None = None,
    rng=None,
    adaptive: bool = False,
    max_gamma: int | None = None,
) -> SpeculativeOutput:
    """Continue input_ids (1, N) by max_new_tokens tokens of ``target``; a draft proposes ``gamma`` a round.

    draft: an anatomy model (its own KV cache is kept), or an object with ``propose(ids, k, temperature,
    rng) -> (tokens, q)`` such as :class:`NgramDrafter`. temperature 0 gives the target's greedy output
    exactly; otherwise the output is distributed as sampling from the target at that temperature (for the
    exact rules). ``rng`` overrides the randomness (:class:`ScriptedRandom` for enumeration).

    adaptive: if True, ``gamma`` is only the first round's draft length: it doubles (up to ``max_gamma``,
    default 4 * gamma) after a round whose drafted tokens were all accepted, stays after a round that
    accepted some, and halves (down to 1) after a round that accepted none. The length depends only on
    earlier rounds, so the output is the same as with a fixed gamma: greedy, token for token; sampling, in
    distribution. (A round whose drafter proposes nothing is a plain one-token decode step.)

    At temperature 0 the target's choices are its argmaxes, so a drafted token is accepted iff it is the
    target's argmax, which is what every rule reduces to; this is checked on the argmaxes directly, without
    building one-hot distributions, and :class:`NgramDrafter` and :class:`ModelDrafter` draft through their
    ``greedy_tokens`` without building q (any other drafter through ``propose``).
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
        got = getattr(input_ids, "shape", input_ids)
        raise TypeError(f"input_ids must be a (1, N) LongTensor, got {got!r}")
    if input_ids.shape[0] != 1 or input_ids.shape[1] == 0:
        raise ValueError(
            f"speculative decoding here runs one sequence: input_ids must be (1, N>=1), "
            f"got {tuple(input_ids.shape)}"
        )
    if not is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if not is_int(gamma) or gamma < 0:
        raise ValueError(f"gamma must be an int >= 0, got {gamma!r}")
    if not isinstance(adaptive, bool):
        raise TypeError(f"adaptive must be a bool, got {type(adaptive).__name__}")
    if max_gamma is None:
        max_gamma = 4 * gamma if adaptive else gamma
    elif not is_int(max_gamma) or max_gamma < gamma:
        raise ValueError(f"max_gamma must be an int >= gamma = {gamma}, got {max_gamma!r}")
    if not isinstance(temperature, (int, float)) or not 0 <= temperature < float("inf"):  # NaN fails too
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    rng = rng or TorchRandom(generator)
    max_len = input_ids.shape[1] + max_new_tokens + max_gamma + 1
    if isinstance(draft, nn.Module):
        drafter = ModelDrafter(draft, max_len)
        draft.eval()
    elif hasattr(draft, "propose"):
        drafter = draft
    else:
        raise TypeError(f"draft must be an anatomy model or have propose(), got {type(draft).__name__}")
    greedy = temperature == 0
    fast_draft = greedy and hasattr(drafter, "greedy_tokens")
    was_training = target.training
    target.eval()
    cache = target.new_cache(max_len=max_len)
    out = SpeculativeOutput(input_ids, 0)
    ids = input_ids
    seq = input_ids[0].tolist()  # the same tokens as a list: what the n-gram drafter searches
    device = input_ids.device
    calls0 = getattr(drafter, "calls", 0)
    g = gamma
    try:
        with torch.inference_mode():
            while out.n_new < max_new_tokens:
                k = min(g, max_new_tokens - out.n_new - 1)
                q = None
                if k <= 0:
                    drafts = []
                elif fast_draft:
                    drafts = drafter.greedy_tokens(seq if isinstance(drafter, NgramDrafter) else ids, k)
                else:
                    drafts, q = drafter.propose(ids, k, temperature, rng)
                k = len(drafts)
                # The target's cache holds every token but the last: feed it and the drafts in one call.
                feed = torch.tensor([seq[len(cache) :] + drafts], dtype=torch.long, device=device)
                logits = target(feed, cache=cache, logits_to_keep=k + 1)[0]
                out.target_calls += 1
                if greedy:
                    choice = logits.argmax(-1).tolist()  # the target's token at each checked position
                    n = 0
                    while n < k and drafts[n] == choice[n]:
                        n += 1
                    nxt = choice[n]
                    if q is None:  # a one-hot q at each drafted token: beta = 1 if accepted, else 0
                        out.beta.extend([1.0] * n + ([0.0] if n < k else []))
                    else:  # p is one-hot at the target's choice: sum_x min(p(x), q(x)) = q(choice)
                        out.beta.extend(float(q[i, choice[i]]) for i in range(min(n + 1, k)))
                else:
                    p = _probs(logits, temperature)
                    n, nxt = verify(p, q, drafts, rng, rule)
                    for i in range(min(n + 1, k)):  # the positions checked on the accepted path
                        out.beta.append(float(torch.minimum(p[i], q[i]).sum()))
                out.drafted.append(k)
                out.accepted.append(n)
                new = drafts[:n] + [nxt]
                seq.extend(new)
                ids = torch.cat([ids, torch.tensor([new], dtype=torch.long, device=device)], dim=1)
                cache.truncate(len(seq) - 1)
                out.n_new += len(new)
                if adaptive and k > 0:
                    g = min(max_gamma, 2 * g) if n == k else g if n > 0 else max(1, g // 2)
                if eos_token_id is not None and eos_token_id in new:
                    break
    finally:
        target.train(was_training)
    stop = input_ids.shape[1] + min(out.n_new, max_new_tokens)
    if eos_token_id is not None:
        tail = seq[input_ids.shape[1] : stop]
        if eos_token_id in tail:
            stop = input_ids.shape[1] + tail.index(eos_token_id) + 1
    out.ids = ids[:, :stop]
    out.n_new = stop - input_ids.shape[1]
    out.draft_calls = getattr(drafter, "calls", 0) - calls0
    return out


# ---------------------------------------------------------------------------------------------------------
# Leviathan et al.'s expected speedup
# ---------------------------------------------------------------------------------------------------------


def expected_tokens_per_call(alpha: float, gamma: int) -> float:
    """E[tokens per target call] = (1 - alpha^(gamma+1)) / (1 - alpha) (Leviathan et al., eq. 1)."""
    check_float("alpha", alpha, lo=0, hi=1)  # checked, not converted: the result is computed as before
    check_int("gamma", gamma, lo=0)
    return float(gamma + 1) if alpha == 1 else (1 - alpha ** (gamma + 1)) / (1 - alpha)


def expected_speedup(alpha: float, gamma: int, c: float, *, v: float = 1.0) -> float:
    """Expected wall-time improvement (1 - alpha^(gamma+1)) / ((1 - alpha)(gamma c + v)) (Leviathan et al.,
    Thm 3.8, where v = 1), c = time of a draft call / time of a target call, v = time of the target's
    verification call on gamma + 1 tokens / time of one target decode step (v = 1: a target call costs the
    same for gamma + 1 tokens as for one)."""
    check_float("c", c, lo=0)
    check_float("v", v, lo=0, lo_open=True)
    return expected_tokens_per_call(alpha, gamma) / (gamma * c + v)


@torch.inference_mode()
def step_costs(
    target: Transformer,
    draft,
    context_ids: torch.Tensor,
    gamma: int,
    repeats: int = 5,
    *,
    threads: int | None = None,
    clock: str = "wall",
) -> dict:
    """Measured cost of the calls a round makes, after a cached context (1, P): a target decode step (one
    token), a target verification call (gamma + 1 tokens) and, for a model draft, a draft decode step.
    Interleaved medians (seconds), ``c`` = draft step / target step (Leviathan et al.'s cost ratio; 0 for a
    drafter that is not a model) and ``verify_overhead`` = verification call / target step. ``threads`` and
    ``clock`` as in :func:`anatomy.timing.interleaved_times` (``threads=1, clock="cpu"``: one thread's CPU
    time, which other jobs on the machine do not change)."""
    import statistics

    from anatomy.timing import interleaved_times

    if not is_int(gamma) or gamma < 1:
        raise ValueError(f"gamma must be a positive int, got {gamma!r}")
    check_tensor("context_ids", context_ids, kind="int", dim=2)
    P = context_ids.shape[1]
    if P < gamma + 2:
        raise ValueError(f"context_ids needs more than gamma + 1 = {gamma + 1} tokens, got {P}")
    ctx, new = context_ids[:, : P - gamma - 1], context_ids[:, P - gamma - 1 :]
    models = {"target": target} | ({"draft": draft} if isinstance(draft, nn.Module) else {})
    caches = {}
    for name, m in models.items():
        m.eval()
        caches[name] = m.new_cache(max_len=P)
        m(ctx, cache=caches[name])

    def call(name: str, n: int):
        def fn():
            caches[name].truncate(ctx.shape[1])
            models[name](new[:, :n], cache=caches[name], logits_to_keep=n)

        return fn

    fns = {"target_step": call("target", 1), "verify_step": call("target", gamma + 1)}
    if "draft" in models:
        fns["draft_step"] = call("draft", 1)
    med = {
        k: statistics.median(v)
        for k, v in interleaved_times(fns, repeats=repeats, threads=threads, clock=clock).items()
    }
    med["c"] = med.get("draft_step", 0.0) / med["target_step"]
    med["verify_overhead"] = med["verify_step"] / med["target_step"]
    return med


# ---------------------------------------------------------------------------------------------------------
# Exact output distributions
# ---------------------------------------------------------------------------------------------------------


def enumerate_distribution(
    sample: Callable[[ScriptedRandom], Sequence[int]], max_runs: int = 100_000
) -> dict[tuple[int, ...], float]:
    """The exact output distribution of a randomized procedure, by following every random branch.

    ``sample(rng)`` must make all its random choices through ``rng.categorical`` / ``rng.bernoulli`` and
    return its output (a sequence of ints). The procedure is re-run once per node of its tree of choices
    (at most ``max_runs``, else RuntimeError). Returns output -> probability (summing to 1).
    """
    if not callable(sample):
        raise TypeError(f"sample must be a callable sample(rng), got {type(sample).__name__}")
    check_positive_int("max_runs", max_runs)
    dist: dict[tuple[int, ...], float] = {}
    stack: list[list[int]] = [[]]
    runs = 0
    while stack:
        script = stack.pop()
        runs += 1
        if runs > max_runs:
            raise RuntimeError(f"more than max_runs={max_runs} runs; use a smaller vocabulary or n")
        rng = ScriptedRandom(script)
        try:
            result = tuple(int(t) for t in sample(rng))
        except _Branch as branch:
            stack.extend(script + [choice] for choice, prob in branch.options if prob > 0)
            continue
        dist[result] = dist.get(result, 0.0) + rng.prob
    return dist


@torch.inference_mode()
def sequence_distribution(
    model: Transformer, input_ids: torch.Tensor, n_tokens: int, temperature: float = 1.0
) -> dict[tuple[int, ...], float]:
    """The exact distribution of the next ``n_tokens`` tokens when sampling from ``model`` after input_ids
    (1, N): the product of its conditionals, for every one of the V^n continuations (one batched call)."""
    check_instance("model", model, Transformer, "an anatomy Transformer")
    check_tensor("input_ids", input_ids, kind="int", dim=2)
    if input_ids.shape[0] != 1 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be (1, N>=1), got {tuple(input_ids.shape)}")
    check_positive_int("n_tokens", n_tokens)
    check_float("temperature", temperature, lo=0, lo_open=True)
    V = model.config.vocab_size
    if V**n_tokens > 65_536:
        raise ValueError(f"V^n = {V}^{n_tokens} continuations is too many to enumerate (n_tokens)")
    conts = torch.cartesian_prod(*[torch.arange(V)] * n_tokens).view(-1, n_tokens)
    ids = torch.cat([input_ids.expand(conts.shape[0], -1), conts], dim=1)
    logp = torch.log_softmax(model.eval()(ids).double() / temperature, dim=-1)
    N = input_ids.shape[1]
    steps = logp[:, N - 1 : N - 1 + n_tokens].gather(-1, conts[:, :, None]).squeeze(-1).sum(-1)
    return {tuple(c.tolist()): float(v) for c, v in zip(conts, steps.exp())}


def dict_total_variation(a: dict, b: dict) -> float:
    """Total variation distance between two distributions given as dicts outcome -> probability (as
    :func:`sequence_distribution` and :func:`enumerate_distribution` return them; an outcome missing from
    one dict has probability 0 there). For arrays: :func:`anatomy.metrics.total_variation`."""
    for name, d in (("a", a), ("b", b)):
        if not isinstance(d, dict):
            raise TypeError(f"{name} must be a dict outcome -> probability, got {type(d).__name__}")
        if not all(is_number(x) and 0 <= x < math.inf for x in d.values()):  # NaN fails too
            raise ValueError(f"{name} must map outcomes to finite probabilities >= 0")
    return 0.5 * sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b))
