"""Autoregressive generation with a KV cache: greedy or sampled, and multi-turn reuse of the cache."""

from __future__ import annotations

import torch

from anatomy._checks import check_float, check_generator, check_int, check_positive_int, check_tensor
from anatomy.cache import KVCache

__all__ = ["generate", "next_token"]

_NAN_LOGITS = "logits contain NaN: no token can be picked (the model's output is not a number)"


def _check_sampling(temperature, top_k, generator) -> None:
    # inf would sample uniformly and a negative temperature the inverted distribution: both refused.
    check_float("temperature", temperature, lo=0.0)
    check_positive_int("top_k", top_k, none=True)
    check_generator("generator", generator)


def _check_generate_args(input_ids, max_new_tokens, temperature, top_k) -> None:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype != torch.long or input_ids.dim() != 2:
        raise TypeError(
            f"input_ids must be a (B, N) LongTensor, got {type(input_ids).__name__} "
            f"{getattr(input_ids, 'dtype', '')} {tuple(getattr(input_ids, 'shape', ()))}"
        )
    if input_ids.shape[1] == 0:
        raise ValueError("input_ids must hold at least one token (a prompt or a BOS token)")
    check_int("max_new_tokens", max_new_tokens, lo=0)
    check_float("temperature", temperature, lo=0.0)
    check_positive_int("top_k", top_k, none=True)


def next_token(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick the next token from logits (B, vocab): argmax when temperature is 0, else sample. -> (B,)

    temperature: a finite number >= 0; top_k: a positive int or None. Logits holding NaN are refused
    (argmax would pick the NaN, sampling would fail deep inside torch).
    """
    check_tensor("logits", logits, kind="float", dim=2)
    _check_sampling(temperature, top_k, generator)
    if temperature == 0:
        tok = logits.argmax(-1)  # argmax picks a NaN if a row holds one: one look at the picked logits
        if bool(logits.gather(-1, tok[:, None]).isnan().any()):
            raise ValueError(_NAN_LOGITS)
        return tok
    if bool(logits.isnan().any()):
        raise ValueError(_NAN_LOGITS)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def generate(
    model,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    cache: KVCache | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    eos_token_id: int | None = None,
    **model_kwargs,
) -> torch.Tensor:
    """Continue input_ids (B, N), the whole sequence so far, by max_new_tokens tokens -> (B, N + new).

    temperature 0 is greedy; otherwise tokens are sampled (pass a seeded ``generator`` to make it
    reproducible). With a ``cache`` from an earlier call (a previous turn of a conversation), only the
    positions not yet in the cache are computed: the prefix is never recomputed. The cache must hold a
    prefix of input_ids, else ValueError. After the call the cache holds every token but the last one
    (the transformers convention), so the next turn can pass the extended sequence back in.
    ``model_kwargs`` go to every model call (e.g. ``encoder_input_ids`` for an EncoderDecoder).
    """
    _check_generate_args(input_ids, max_new_tokens, temperature, top_k)
    check_generator("generator", generator)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be an anatomy model (a torch.nn.Module), got {type(model).__name__}")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    check_int("eos_token_id", eos_token_id, lo=0, hi=None if vocab is None else vocab - 1, none=True)
    if cache is None:
        cache = model.new_cache(batch_size=input_ids.shape[0])
    elif not isinstance(cache, KVCache):
        raise TypeError(
            f"cache must be an anatomy.KVCache (from model.new_cache()), got {type(cache).__name__}"
        )
    if isinstance(getattr(model, "layers", None), torch.nn.Module):
        cache.claim(model.layers)  # refuse another model's cache before truncating it below
    n_cached = len(cache)
    if n_cached > input_ids.shape[1] or not torch.equal(
        cache.tokens, input_ids[:, :n_cached].to(cache.device)
    ):
        raise ValueError(
            f"the cache holds {n_cached} tokens that are not a prefix of input_ids: pass the whole "
            "conversation so far, or start a new cache"
        )
    if n_cached == input_ids.shape[1]:
        cache.truncate(n_cached - 1)  # recompute the last position: we need its logits
    was_training = model.training
    model.eval()
    try:
        out = [input_ids]
        if max_new_tokens == 0:
            return input_ids
        # inference_mode: no_grad, and no autograd bookkeeping on each new tensor either (a few % per token).
        with torch.inference_mode():
            # Only the last position's logits are needed: the LM head skips the rest of the prompt.
            logits = model(input_ids[:, len(cache) :], cache=cache, logits_to_keep=1, **model_kwargs)[:, -1]
            done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            for step in range(max_new_tokens):
                tok = next_token(logits, temperature, top_k, generator)
                if eos_token_id is not None:
                    tok = torch.where(done, torch.full_like(tok, eos_token_id), tok)
                    done |= tok == eos_token_id
                out.append(tok[:, None])
                if step == max_new_tokens - 1 or bool(done.all()):
                    break
                logits = model(tok[:, None], cache=cache, logits_to_keep=1, **model_kwargs)[:, -1]
        return torch.cat(out, dim=1)  # outside inference mode: a normal tensor the caller may edit in place
    finally:
        model.train(was_training)
