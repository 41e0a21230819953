"""The encoder's niche: classifying sentences with an encoder (MiniLM's mean-pooled embeddings
and prototypes) or by prompting a decoder (SmolLM2 zero-shot, few-shot with a cached prefix, or used as an
encoder), each way timed and its FLOPs counted."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import torch

from anatomy._checks import check_instance, check_int, check_tensor
from anatomy.cost import forward_flops
from anatomy.experiments.kv_cache import with_mask
from anatomy.model import Transformer
from anatomy.timing import interleaved_times

__all__ = [
    "CLASSIFIERS",
    "TOPICS",
    "compare_classifiers",
    "fewshot_classify",
    "label_prompts",
    "nearest_prototype",
    "prompt_classify",
    "sentence_embeddings",
    "topic_dataset",
]

# A small labelled set written for this book: four topics, two labelled examples each (for prototypes) and
# eight test sentences each. Small on purpose: one test sentence is 1/32 of the accuracy.
TOPICS: dict[str, dict[str, tuple[str, ...]]] = {
    "Sports": {
        "examples": (
            "The team scored twice in the second half to win the championship.",
            "She won the gold medal in the hundred-metre sprint.",
        ),
        "test": (
            "The striker curled the ball into the top corner in the last minute of extra time.",
            "She finished the marathon in under three hours despite the heat.",
            "The home team lost the final after a controversial penalty.",
            "He has been training six days a week to qualify for the national swimming championship.",
            "Our coach switched to a zone defence in the second half and we won by twelve points.",
            "The tennis match went to a fifth set and lasted almost five hours.",
            "After the injury, the goalkeeper missed the rest of the season.",
            "The cyclists climbed the mountain pass in thick fog during the third stage of the race.",
        ),
    },
    "Food": {
        "examples": (
            "Mix the flour, butter and sugar, then bake the cake for forty minutes.",
            "The soup was seasoned with fresh herbs and black pepper.",
        ),
        "test": (
            "Let the dough rest for an hour before you roll it out and cut the noodles.",
            "This curry gets its warmth from ginger, cumin and a little chili.",
            "The bakery on the corner sells the best sourdough bread in town.",
            "Roast the vegetables with olive oil and garlic until the edges turn brown.",
            "For dessert we had a lemon tart with fresh raspberries.",
            "Simmer the soup slowly so the beans become soft and creamy.",
            "He always adds too much salt to the pasta water.",
            "The restaurant's tasting menu had seven small courses, each paired with a wine.",
        ),
    },
    "Weather": {
        "examples": (
            "Tomorrow will be cloudy with a chance of showers in the afternoon.",
            "Strong winds and freezing temperatures are forecast for the coast.",
        ),
        "test": (
            "Heavy rain is expected tonight, with winds of up to eighty kilometres per hour.",
            "The morning fog should lift by noon, leaving clear skies for the afternoon.",
            "A heat wave will push temperatures above thirty-five degrees this weekend.",
            "Snow is likely in the mountains, so drivers should carry chains.",
            "After weeks of drought, the first thunderstorm finally brought some relief.",
            "Forecasters warn that the hurricane could make landfall on Thursday.",
            "It was so humid that the windows were covered in condensation all day.",
            "Frost overnight may damage early blossoms in the orchards.",
        ),
    },
    "Technology": {
        "examples": (
            "The software update fixes several security bugs in the browser.",
            "This computer has sixteen gigabytes of memory and a fast graphics card.",
        ),
        "test": (
            "The new phone has a faster processor and a battery that lasts two days.",
            "Remember to back up your files before you install the operating system update.",
            "The company released an open-source library for training neural networks.",
            "My laptop keeps disconnecting from the wireless network after it wakes from sleep.",
            "Engineers cut the chip's power consumption by moving to a smaller manufacturing process.",
            "The website crashed because the database could not handle so many requests.",
            "She wrote a script that renames thousands of photos automatically.",
            "The satellite internet service now offers lower latency for rural users.",
        ),
    },
}


def topic_dataset() -> tuple[list[str], list[int], list[str], list[int], list[str]]:
    """(test sentences, their label indices, example sentences, their label indices, label names)."""
    labels = list(TOPICS)
    test, y, examples, ey = [], [], [], []
    for i, name in enumerate(labels):
        test += TOPICS[name]["test"]
        y += [i] * len(TOPICS[name]["test"])
        examples += TOPICS[name]["examples"]
        ey += [i] * len(TOPICS[name]["examples"])
    return test, y, examples, ey, labels


@torch.inference_mode()
def sentence_embeddings(encoder: Transformer, tokenizer, sentences: Sequence[str]) -> torch.Tensor:
    """Sentence-BERT embeddings (Reimers & Gurevych 2019): the encoder's last hidden states averaged over
    the real tokens of each sentence, L2-normalised. One padded batch. -> (N, d)"""
    check_instance("encoder", encoder, Transformer, "an anatomy Transformer")
    if isinstance(sentences, str) or not sentences:
        raise ValueError(f"sentences must be a non-empty sequence of str, got {sentences!r}")
    enc = tokenizer(list(sentences), padding=True, return_tensors="pt")
    mask = enc["attention_mask"]
    hidden = encoder.eval()(enc["input_ids"], attention_mask=mask, token_type_ids=enc.get("token_type_ids"))
    mean = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    return torch.nn.functional.normalize(mean, dim=-1)


def nearest_prototype(embeddings: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Index of the most cosine-similar prototype (C, d) for each embedding (N, d). -> (N,)"""
    check_tensor("embeddings", embeddings, kind="float")
    check_tensor("prototypes", prototypes, kind="float")
    if (
        embeddings.dim() != 2
        or prototypes.dim() != 2
        or embeddings.shape[1] != prototypes.shape[1]
        or not prototypes.numel()
    ):
        raise ValueError(
            f"need (N, d) embeddings and (C, d) prototypes, got {tuple(embeddings.shape)} and "
            f"{tuple(prototypes.shape)}"
        )
    e = torch.nn.functional.normalize(embeddings, dim=-1)
    p = torch.nn.functional.normalize(prototypes, dim=-1)
    return (e @ p.T).argmax(-1)


def label_prompts(
    tokenizer, sentences: Sequence[str], labels: Sequence[str], style: str = "chat"
) -> list[list[int]]:
    """Prompts asking a decoder for the topic of each sentence, ending where its answer would start.

    style "chat": one user message in the tokenizer's chat template, then the assistant header.
    style "plain": the text ``Sentence: ...`` and ``Topic (A, B, C or D):``, no template.
    """
    if style not in ("chat", "plain"):
        raise ValueError(f"style must be 'chat' or 'plain', got {style!r}")
    if isinstance(labels, str) or not labels:
        raise ValueError(f"labels must be a non-empty sequence of label words, got {labels!r}")
    options = ", ".join(labels[:-1]) + f" or {labels[-1]}"
    out = []
    for s in sentences:
        if style == "chat":
            msg = [
                {
                    "role": "user",
                    "content": f"Which topic is this sentence about: {options}? Answer with "
                    f"one word.\n\nSentence: {s}",
                }
            ]
            text = tokenizer.apply_chat_template(msg, tokenize=False, add_generation_prompt=True)
        else:
            text = f"Sentence: {s}\nTopic ({options}):"
        out.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return out


def _label_ids(tokenizer, labels: Sequence[str], space: bool) -> list[int]:
    pad = " " if space else ""
    ids = [tokenizer(pad + name, add_special_tokens=False)["input_ids"][0] for name in labels]
    if len(set(ids)) != len(labels):
        raise ValueError(f"the labels {list(labels)} do not start with distinct tokens")
    return ids


@torch.inference_mode()
def prompt_classify(
    decoder: Transformer, tokenizer, sentences: Sequence[str], labels: Sequence[str], style: str = "chat"
) -> dict:
    """Zero-shot classification by prompting: the label whose first token the decoder finds most likely
    where its answer starts. One right-padded batch: with a causal mask the padding after a prompt cannot
    affect it, and the LM head runs only at each prompt's last token (as a classifier would).

    Returns ``pred`` (N,), ``scores`` (N, C) logits of the label tokens and ``lengths`` (prompt tokens).
    """
    check_instance("decoder", decoder, Transformer, "an anatomy Transformer")
    label_ids = _label_ids(tokenizer, labels, space=style == "plain")
    prompts = label_prompts(tokenizer, sentences, labels, style)
    lengths = torch.tensor([len(p) for p in prompts])
    ids = torch.zeros(len(prompts), int(lengths.max()), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, : len(p)] = torch.tensor(p)
    body = with_mask(decoder, decoder.config.mask, lm_head=False).eval()
    hidden = body(ids)[torch.arange(len(prompts)), lengths - 1]  # (N, d), final-normed
    scores = decoder.lm_head(hidden)[:, label_ids]
    return {"pred": scores.argmax(-1), "scores": scores, "lengths": lengths.tolist()}


def _fewshot_prefix(
    tokenizer, labels: Sequence[str], examples: Sequence[str], example_labels: Sequence[int]
) -> list[int]:
    """Token ids of the few-shot prompt's labelled examples (the prefix :func:`fewshot_classify` caches)."""
    shots = "".join(f"Sentence: {e}\nTopic: {labels[k]}\n\n" for e, k in zip(examples, example_labels))
    return tokenizer(shots, add_special_tokens=False)["input_ids"]


@torch.inference_mode()
def fewshot_classify(
    decoder: Transformer,
    tokenizer,
    sentences: Sequence[str],
    labels: Sequence[str],
    examples: Sequence[str],
    example_labels: Sequence[int],
) -> dict:
    """Few-shot classification by prompting, with the shared prefix cached once (the KV cache's trick).

    The prompt is the labelled examples as ``Sentence: ...`` / ``Topic: <label>`` pairs, then the sentence
    and ``Topic:``. The examples' KV cache is computed once; each sentence runs only its own tokens on it.
    Returns ``pred`` (N,), ``scores`` (N, C), ``prefix_len`` and ``lengths`` (tokens run per sentence).
    """
    check_instance("decoder", decoder, Transformer, "an anatomy Transformer")
    if len(examples) != len(example_labels):
        raise ValueError("examples and example_labels must have the same length")
    for label in example_labels:
        check_int("example_labels", label, lo=0, hi=len(labels) - 1)
    label_ids = _label_ids(tokenizer, labels, space=True)
    prefix = torch.tensor([_fewshot_prefix(tokenizer, labels, examples, example_labels)])
    suffixes = [tokenizer(f"Sentence: {s}\nTopic:", add_special_tokens=False)["input_ids"] for s in sentences]
    cache = decoder.eval().new_cache(max_len=prefix.shape[1] + max(len(x) for x in suffixes))
    decoder(prefix, cache=cache)
    body = with_mask(decoder, decoder.config.mask, lm_head=False)
    scores = []
    for suffix in suffixes:
        cache.truncate(prefix.shape[1])
        hidden = body(torch.tensor([suffix]), cache=cache)[0, -1]
        scores.append(decoder.lm_head(hidden)[label_ids])
    scores = torch.stack(scores)
    return {
        "pred": scores.argmax(-1),
        "scores": scores,
        "prefix_len": prefix.shape[1],
        "lengths": [len(x) for x in suffixes],
    }


CLASSIFIERS = (
    "MiniLM, prototypes from examples",
    "MiniLM, prototypes from label names",
    "SmolLM2 prompted, zero-shot (chat)",
    "SmolLM2 prompted, zero-shot (plain)",
    "SmolLM2 prompted, few-shot (cached examples)",
    "SmolLM2 as an encoder, prototypes from examples",
)


@torch.inference_mode()
def compare_classifiers(
    encoder: Transformer,
    encoder_tokenizer,
    decoder: Transformer,
    decoder_tokenizer,
    *,
    encoder_repeats: int = 5,
    clock: str = "cpu",
) -> dict:
    """Classify :data:`TOPICS`'s test sentences six ways (``CLASSIFIERS``) with an encoder (MiniLM) and a
    decoder (SmolLM2); time each way once, interleaved, after an untimed warm-up call of each model. The
    encoder's ways take milliseconds, so a single descheduling by another job could multiply their time:
    they are timed ``encoder_repeats`` times in all (interleaved with each other) and their median is
    reported. The decoder's ways take seconds, which averages such interruptions out. ``clock="cpu"``
    (default) times every way on one thread by that thread's CPU time, so other jobs on the machine do not
    enter the ratios; ``clock="wall"`` uses elapsed time with torch's current threads.

    Returns name -> ``accuracy``, ``pred`` (N,), ``seconds`` and ``flops`` per sentence (counted: the tokens
    each way runs through the model that runs them; prototypes and the few-shot examples' cache are
    one-time costs, included in the measured time and left out of the counted FLOPs), ``tokens`` per
    sentence; and ``labels``, ``n_test``.
    """
    if clock not in ("cpu", "wall"):
        raise ValueError(f'clock must be "cpu" or "wall", got {clock!r}')
    check_instance("encoder", encoder, Transformer, "an anatomy Transformer")
    check_instance("decoder", decoder, Transformer, "an anatomy Transformer")
    check_int("encoder_repeats", encoder_repeats, lo=1)
    test, y, examples, ey, labels = topic_dataset()
    y_t, ey_t = torch.tensor(y), torch.tensor(ey)
    body = with_mask(decoder, decoder.config.mask, lm_head=False)

    def by_examples(model, tok):
        e, p = sentence_embeddings(model, tok, test), sentence_embeddings(model, tok, examples)
        return nearest_prototype(e, torch.stack([p[ey_t == k].mean(0) for k in range(len(labels))]))

    def by_names():
        names = [f"This sentence is about {name.lower()}." for name in labels]
        e = sentence_embeddings(encoder, encoder_tokenizer, test)
        return nearest_prototype(e, sentence_embeddings(encoder, encoder_tokenizer, names))

    ways = {
        CLASSIFIERS[0]: lambda: by_examples(encoder, encoder_tokenizer),
        CLASSIFIERS[1]: by_names,
        CLASSIFIERS[2]: lambda: prompt_classify(decoder, decoder_tokenizer, test, labels, "chat")["pred"],
        CLASSIFIERS[3]: lambda: prompt_classify(decoder, decoder_tokenizer, test, labels, "plain")["pred"],
        CLASSIFIERS[4]: lambda: fewshot_classify(decoder, decoder_tokenizer, test, labels, examples, ey)[
            "pred"
        ],
        CLASSIFIERS[5]: lambda: by_examples(body, decoder_tokenizer),
    }
    sentence_embeddings(encoder, encoder_tokenizer, examples[:2])  # first calls build fused weights: untimed
    sentence_embeddings(body, decoder_tokenizer, examples[:2])
    preds: dict[str, torch.Tensor] = {}

    def timed(name):
        def run():
            preds[name] = ways[name]()

        return run

    check_int("encoder_repeats", encoder_repeats, lo=1)
    timing = dict(threads=1, clock="cpu") if clock == "cpu" else dict(threads=None)
    times = interleaved_times({k: timed(k) for k in ways}, repeats=1, warmup=0, **timing)
    if encoder_repeats > 1:
        again = interleaved_times(
            {k: timed(k) for k in CLASSIFIERS[:2]}, repeats=encoder_repeats - 1, warmup=0, **timing
        )
        for k, extra in again.items():
            times[k] = [statistics.median(times[k] + extra)]
    enc_cfg, dec_cfg = encoder.config, decoder.config
    mini = [len(t) for t in encoder_tokenizer(test)["input_ids"]]
    bare = [len(decoder_tokenizer(t, add_special_tokens=False)["input_ids"]) for t in test]
    chat = [len(p) for p in label_prompts(decoder_tokenizer, test, labels, "chat")]
    plain = [len(p) for p in label_prompts(decoder_tokenizer, test, labels, "plain")]
    shots = len(_fewshot_prefix(decoder_tokenizer, labels, examples, ey))
    few_lens = [
        len(decoder_tokenizer(f"Sentence: {t}\nTopic:", add_special_tokens=False)["input_ids"]) for t in test
    ]

    def mean_flops(cfg, lengths, past=0, logits="last"):
        return statistics.mean(forward_flops(cfg, n, past, logits=logits)["total"] for n in lengths)

    counted = {
        CLASSIFIERS[0]: (mini, mean_flops(enc_cfg, mini, logits="none")),
        CLASSIFIERS[1]: (mini, mean_flops(enc_cfg, mini, logits="none")),
        CLASSIFIERS[2]: (chat, mean_flops(dec_cfg, chat)),
        CLASSIFIERS[3]: (plain, mean_flops(dec_cfg, plain)),
        CLASSIFIERS[4]: (few_lens, mean_flops(dec_cfg, few_lens, shots)),
        CLASSIFIERS[5]: (bare, mean_flops(dec_cfg, bare, logits="none")),
    }
    out: dict = {"labels": labels, "n_test": len(test)}
    for name in ways:
        lengths, flops = counted[name]
        out[name] = {
            "pred": preds[name],
            "accuracy": float((preds[name] == y_t).double().mean()),
            "seconds": times[name][0] / len(test),
            "flops": flops,
            "tokens": statistics.mean(lengths),
        }
    return out
