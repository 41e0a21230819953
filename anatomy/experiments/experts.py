"""Mixture of experts: parameter counts, routing statistics, DeepSeek-V3's published sizes,
and dense-versus-MoE training runs at matched active parameters."""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn as nn

from anatomy._checks import check_instance, check_int, check_positive_int, is_int
from anatomy.model import Config, Transformer
from anatomy.moe import MoE, Routing, moe_layers

__all__ = [
    "effective_experts",
    "expert_token_table",
    "load_imbalance",
    "matched_dense_config",
    "active_param_counts",
    "routing_of",
    "train_runs",
    "deepseek_v3_params",
    "DEEPSEEK_V3",
]


def matched_dense_config(config: Config, moe: MoE | Transformer) -> Config:
    """The dense Config whose MLP has as many parameters as the MoE layer's active experts.

    d_ff = (n_shared + top_k) * d_expert: the same hidden units per token. The MoE model still has the
    router's extra d_model * n_routed parameters per layer (see ``active_param_counts``).
    """
    check_instance("config", config, Config, "an anatomy Config")
    check_instance("moe", moe, (MoE, nn.Module), "an MoE layer or a model with MoE layers")
    if not isinstance(moe, MoE) and not moe_layers(moe):
        raise ValueError("moe must be an MoE layer or a model with MoE layers (see moe_decoder)")
    layer = moe if isinstance(moe, MoE) else moe_layers(moe)[0]
    return replace(config, mlp="swiglu", d_ff=(layer.n_shared + layer.top_k) * layer.d_expert)


def active_param_counts(model: Transformer) -> dict[str, int]:
    """Non-embedding parameters (Kaplan et al.'s N): total, and active per token (top_k routed experts)."""
    check_instance("model", model, Transformer, "an anatomy Transformer")
    total = model.num_params()
    inactive = 0
    for layer in moe_layers(model):
        per_expert = sum(p.numel() for p in layer.experts[0].parameters())
        inactive += (layer.n_routed - layer.top_k) * per_expert
    return {"total": total, "active": total - inactive}


def load_imbalance(load: torch.Tensor) -> float:
    """MaxVio (Wang et al. 2024): (max load - mean load) / mean load; 0 is perfectly balanced."""
    load = torch.as_tensor(load).float()
    if load.ndim != 1 or load.numel() == 0:
        raise ValueError(f"load must be a non-empty 1-D tensor of counts, got shape {tuple(load.shape)}")
    if not torch.isfinite(load).all() or (load < 0).any():
        raise ValueError(f"load must hold counts >= 0, got {load.tolist()}")
    mean = load.mean()
    if mean <= 0:
        raise ValueError("load must contain at least one routed token")
    return float((load.max() - mean) / mean)


def effective_experts(load: torch.Tensor) -> float:
    """exp(entropy) of the load's distribution over experts: N_r when even, 1 when one expert gets all."""
    load = torch.as_tensor(load).double()
    bad = (load < 0).any() or not load.isfinite().all()
    if load.ndim != 1 or load.numel() == 0 or bad or load.sum() <= 0:
        raise ValueError(f"load must be a 1-D tensor of counts with a positive sum, got {load}")
    p = load / load.sum()
    return float(torch.exp(-(p * p.clamp_min(1e-300).log()).sum()))


@torch.no_grad()
def routing_of(model: Transformer, input_ids: torch.Tensor) -> list[Routing]:
    """Run ``model`` on input_ids (B, N) in eval mode; return each MoE layer's routing of the B*N tokens."""
    check_instance("model", model, nn.Module, "a model with MoE layers")
    layers = moe_layers(model)
    if not layers:
        raise ValueError("routing_of needs a model with MoE layers (see moe_decoder)")
    was_training = model.training
    model.eval()
    try:
        model(input_ids)
    finally:
        model.train(was_training)
    return [layer.last_routing for layer in layers]


def expert_token_table(
    routings: list[Routing] | Routing, input_ids: torch.Tensor, vocab_size: int, rank: int = 0
) -> torch.Tensor:
    """Counts (vocab_size, N_r): how often each token id was sent to each expert as its rank-th choice.

    rank 0 is each token's first choice (highest s + b); ``rank=None`` counts every selected expert.
    Summed over the given layers.
    """
    if isinstance(routings, Routing):
        routings = [routings]
    if not isinstance(routings, (list, tuple)) or not all(isinstance(r, Routing) for r in routings):
        raise TypeError(f"routings must be a Routing or a list of them, got {type(routings).__name__}")
    if not routings:
        raise ValueError("routings must hold at least one Routing")
    if not isinstance(input_ids, torch.Tensor) or input_ids.is_floating_point():
        raise TypeError("input_ids must be a tensor of token ids")
    check_positive_int("vocab_size", vocab_size)
    if input_ids.numel() and int(input_ids.max()) >= vocab_size:
        raise ValueError(f"vocab_size must exceed every id in input_ids, got {vocab_size}")
    check_int("rank", rank, lo=0, hi=routings[0].experts.shape[1] - 1, none=True)
    ids = input_ids.reshape(-1)
    n_routed = routings[0].scores.shape[-1]
    table = torch.zeros(vocab_size, n_routed, dtype=torch.long)
    for r in routings:
        experts = r.experts if rank is None else r.experts[:, rank : rank + 1]
        k = experts.shape[1]
        ones = torch.ones(ids.numel() * k, dtype=torch.long)
        table.index_put_((ids.repeat_interleave(k), experts.reshape(-1)), ones, accumulate=True)
    return table


# ------------------------------------------------------------------------------------- experiments


def train_runs(
    models: dict[str, Transformer],
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    seq_len: int,
    lr: float = 5e-3,
    seed: int = 0,
    n_val_batches: int = 8,
    eval_every: int | None = None,
) -> dict[str, dict]:
    """Train each model on the same batches (same seed, same steps); return what the chapter plots.

    For each name: ``history`` (anatomy.train.History, with validation losses at ``eval_every``),
    ``val_loss`` (mean next-token loss on ``n_val_batches`` held-out batches, nats), ``params``
    (``active_param_counts``), ``tokens`` (targets trained on) and ``load`` (per MoE layer, a (steps, N_r)
    tensor of tokens sent to each routed expert at each training step; empty for a dense model).
    """
    from anatomy import data
    from anatomy import train as training

    if not isinstance(models, dict) or not models:
        raise ValueError("models must be a non-empty dict name -> model")
    for name in ("steps", "batch_size", "seq_len", "n_val_batches"):
        check_int(name, locals()[name], lo=1)
    batches = data.token_batches(train_ids, batch_size, seq_len, seed=seed)
    val = data.token_batches(val_ids, batch_size, seq_len, seed=seed + 1)
    out = {}
    for name, model in models.items():
        history = training.train(
            model,
            batches,
            steps=steps,
            lr=lr,
            seed=seed,
            progress=False,
            eval_fn=(lambda m: training.evaluate(m, val, n_val_batches)) if eval_every else None,
            eval_every=eval_every,
        )
        # With an eval_fn, train() always evaluates after the last step: that is the final held-out loss
        # (same batches, same eval mode), so it is not computed a second time.
        final = history.evals[-1][1]["loss"] if eval_every else training.evaluate(model, val, n_val_batches)
        out[name] = {
            "history": history,
            "val_loss": final,
            "params": active_param_counts(model),
            "tokens": history.tokens[-1],
            "load": [torch.stack(layer.load_history) for layer in moe_layers(model)],
        }
    return out


# DeepSeek-V3's released configuration (inference/configs/config_671B.json of deepseek-ai/DeepSeek-V3):
# multi-head latent attention, 3 dense layers, then 58 MoE layers of 1 shared + 256 routed experts, top 8.
DEEPSEEK_V3 = {
    "vocab_size": 129280,
    "dim": 7168,
    "inter_dim": 18432,
    "moe_inter_dim": 2048,
    "n_layers": 61,
    "n_dense_layers": 3,
    "n_heads": 128,
    "n_routed_experts": 256,
    "n_shared_experts": 1,
    "n_activated_experts": 8,
    "q_lora_rank": 1536,
    "kv_lora_rank": 512,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
}


def deepseek_v3_params(config: dict | None = None) -> dict[str, float]:
    """Total and per-token active parameters of DeepSeek-V3 from its configuration (main model, no MTP).

    Counts every weight: embeddings and output head, multi-head latent attention (with its two
    low-rank norms), the layer norms, 3 dense SwiGLU layers, and per MoE layer the router (centroids and
    balancing bias), the shared expert and the routed experts, of which n_activated are active per token.
    Returns "total", "active" (every weight a token touches, its input-embedding row included),
    "embedding" (the input embedding table: a token reads one row of it, a lookup with no arithmetic, so
    "active" minus "embedding" is the count without it) and "routed_share" (routed experts / total).
    """
    if config is not None and not isinstance(config, dict):
        raise TypeError(f"config must be a dict of DEEPSEEK_V3's keys or None, got {type(config).__name__}")
    c = {**DEEPSEEK_V3, **(config or {})}
    for key, value in c.items():
        if key not in DEEPSEEK_V3 or not is_int(value) or value < 0:
            raise ValueError(f"config[{key!r}] must be a key of DEEPSEEK_V3 with an int >= 0, got {value!r}")
    if not 1 <= c["n_layers"] or c["n_layers"] < c["n_dense_layers"]:
        raise ValueError(f"config['n_layers'] must be >= max(1, n_dense_layers), got {c['n_layers']}")
    d, H = c["dim"], c["n_heads"]
    attention = (
        d * c["q_lora_rank"]
        + c["q_lora_rank"]  # W_DQ and its norm
        + c["q_lora_rank"] * H * (c["qk_nope_head_dim"] + c["qk_rope_head_dim"])  # W_UQ (and rope part)
        + d * (c["kv_lora_rank"] + c["qk_rope_head_dim"])
        + c["kv_lora_rank"]  # W_DKV, W_KR, norm
        + c["kv_lora_rank"] * H * (c["qk_nope_head_dim"] + c["v_head_dim"])  # W_UK, W_UV
        + H * c["v_head_dim"] * d  # W_O
    )
    per_layer = attention + 2 * d  # + the two RMSNorms of the block
    expert = 3 * d * c["moe_inter_dim"]
    router = c["n_routed_experts"] * (d + 1)
    n_moe = c["n_layers"] - c["n_dense_layers"]
    common = (
        c["n_layers"] * per_layer
        + c["n_dense_layers"] * 3 * d * c["inter_dim"]
        + 2 * c["vocab_size"] * d
        + d  # embeddings, output head, final norm
        + n_moe * (router + c["n_shared_experts"] * expert)
    )
    routed = n_moe * c["n_routed_experts"] * expert
    active_routed = n_moe * c["n_activated_experts"] * expert
    total = common + routed
    return {
        "total": total,
        "active": common + active_routed,
        "embedding": c["vocab_size"] * d,
        "routed_share": routed / total,
    }
