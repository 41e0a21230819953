"""Few-shot prompting of a pretrained decoder: accuracy against the number of examples."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from anatomy._checks import check_bool, check_instance, check_int
from anatomy.model import Transformer

__all__ = ["FewShot", "few_shot_accuracy"]


# ---------------------------------------------------------------------------------------------------------
# Few-shot prompting of a causal LM
# ---------------------------------------------------------------------------------------------------------


@dataclass
class FewShot:
    """Accuracy of k-shot prompting for each k."""

    ks: list[int]
    accuracy: list[float]
    n_queries: int
    template: str
    example_prompt: str  # the prompt of the first query at the largest k


def _encode(tokenizer, text: str) -> list[int]:
    ids = tokenizer.encode(text)
    if hasattr(ids, "ids"):  # a tokenizers.Encoding
        ids = ids.ids
    return [int(i) for i in ids]


def _batched_queries(model: nn.Module, context: list[int], queries: list[list[int]]) -> torch.Tensor:
    """Logits (n, vocab) after each query, all queries continuing the same context, in one batched call.

    The context runs once (batch 1); its keys and values are then shared by every query through a cache
    of batch size n (``KVCache.update``/``commit``), and the queries, right-padded with their own last
    token (harmless: a causal model's logits at a position never depend on later ones), run together.
    A decoder's cost here is dominated by reading its weights, so one call for n queries is ~n times
    cheaper than n calls. An anatomy ``Transformer`` runs its LM head only where a logit is read (the
    context's positions need none, each query only its last): the same numbers, bitwise, without most
    of the head's work (for SmolLM2, about a fifth of its arithmetic per token).
    """
    n = len(queries)
    width = max(map(len, queries))
    batch = torch.tensor([q + [q[-1]] * (width - len(q)) for q in queries])
    cache = model.new_cache(batch_size=n, max_len=len(context) + width)
    ours = isinstance(model, Transformer) and model.config.lm_head
    if context:
        single = model.new_cache(batch_size=1, max_len=len(context))
        model(torch.tensor([context]), cache=single, **({"logits_to_keep": 1} if ours else {}))
        for layer in range(single.n_layers):
            k, v = single.keys(layer), single.values(layer)
            cache.update(layer, k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1))
        cache.commit(single.tokens.expand(n, -1))
        cache._owner = single._owner  # the same model's keys and values: it may continue this cache
    rows, last = torch.arange(n), torch.tensor([len(q) - 1 for q in queries])
    if ours:  # the LM head's input at each query's last token, then the head on those n rows only
        hidden = model(batch, cache=cache, return_hidden=True, logits_to_keep=1).hidden_states[-1]
        return model.lm_head(hidden[rows, last])
    return model(batch, cache=cache)[rows, last]  # (n, width, vocab) -> (n, vocab)


@torch.no_grad()
def few_shot_accuracy(
    model: nn.Module,
    tokenizer,
    pairs: Sequence[tuple[str, str]],
    ks: Sequence[int] = (0, 1, 2, 4, 8),
    *,
    n_queries: int = 24,
    n_prompts: int = 2,
    template: str = "{x} -> {y}\n",
    instruction: str = "",
    wrong_labels: bool = False,
    seed: int = 0,
) -> FewShot:
    """k-shot accuracy of a causal LM on a task given by (input, output) string pairs.

    For each k and each of `n_prompts` random demonstration sets (k pairs), every one of `n_queries` held-out
    queries (pairs not in the demonstrations) is appended as ``template`` up to its output (a space before
    the output goes with the output, as BPE tokenizers attach it to the next word); the model's greedy
    next token must equal the first token of the output as the tokenizer splits the full text. The
    demonstrations run once per set, and all its queries share their KV cache in one batched call
    (`_batched_queries`), so a query costs only its own tokens. Accuracy is averaged over queries and
    demonstration sets. The draws for each k come from a generator seeded by (seed, k): two calls with the
    same seed see the same demonstration inputs and queries at every k they share (e.g. with and without
    wrong_labels), whatever their other ks.

    wrong_labels=True pairs every demonstration's input with the output of another pair (Min et al. 2022's
    test: does the model learn the mapping from the demonstrations or only their format?); the outputs come
    from the other demonstrations (one place along, k >= 2) or, for k = 1, from a pair that is not a query,
    so no query's answer appears in its prompt. Queries are always scored against their true output.
    """
    check_instance("model", model, nn.Module, "a torch.nn.Module")
    if isinstance(pairs, (str, bytes)) or not hasattr(pairs, "__iter__"):
        raise TypeError(f"pairs must be a sequence of (x, y) pairs, got {type(pairs).__name__}")
    if isinstance(ks, (str, bytes)) or not hasattr(ks, "__iter__") or not list(ks):
        raise ValueError(f"ks must be a non-empty sequence of ints >= 0, got {ks!r}")
    for k in ks:
        check_int("ks", k, lo=0)
    check_int("n_queries", n_queries, lo=1)
    check_int("n_prompts", n_prompts, lo=1)
    check_bool("wrong_labels", wrong_labels)
    if "{x}" not in template or "{y}" not in template or not template.endswith("\n"):
        raise ValueError("template must contain {x} and {y} and end with a newline")
    pairs = list(pairs)
    need = max(ks) + n_queries + (1 if wrong_labels and 1 in ks else 0)
    if len(pairs) < need:
        raise ValueError(f"need at least max(ks) + n_queries = {need} pairs, got {len(pairs)}")
    for k in ks:
        check_int("k", k, lo=0)
    head = template.split("{y}")[0]
    was_training = model.training
    model.eval()
    accuracy, example = [], ""
    try:
        for k in ks:
            rng = np.random.default_rng((seed, k))  # the same draws for k whatever the other ks are
            correct = total = 0
            for _ in range(n_prompts):
                order = rng.permutation(len(pairs))
                demos = [pairs[i] for i in order[:k]]
                queries = [pairs[i] for i in order[k : k + n_queries]]
                if wrong_labels and k == 1:
                    demos = [(demos[0][0], pairs[order[-1]][1])]
                elif wrong_labels and k > 1:
                    demos = [(x, demos[(j + 1) % k][1]) for j, (x, _) in enumerate(demos)]
                context = instruction + "".join(template.format(x=x, y=y) for x, y in demos)
                ctx_ids = _encode(tokenizer, context) if context else []
                rows, answers = [], []
                for x, y in queries:
                    prompt = head.format(x=x).rstrip(" ")  # a space before the answer belongs to it
                    full = _encode(tokenizer, context + template.format(x=x, y=y))
                    q_ids = full[len(ctx_ids) : len(_encode(tokenizer, context + prompt))]
                    if full[: len(ctx_ids)] != ctx_ids or not q_ids:
                        raise ValueError(
                            "the tokenizer merges the context with the query; change the template"
                        )
                    rows.append(q_ids)
                    answers.append(full[len(ctx_ids) + len(q_ids)])
                    if k == max(ks) and not example:
                        example = context + prompt
                logits = _batched_queries(model, ctx_ids, rows)  # (n_queries, vocab) at each query's end
                correct += int((logits.argmax(-1) == torch.tensor(answers)).sum())
                total += len(rows)
            accuracy.append(correct / total)
    finally:
        model.train(was_training)
    return FewShot(list(ks), accuracy, n_queries, template, example)
