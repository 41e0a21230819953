"""A DeepSeek-V3 mixture-of-experts feed-forward layer, and decoders built with it.

DeepSeek-V3's MoE layer (DeepSeek-AI 2024, section 2.1.2; the equations seed 003 quotes) replaces a
block's feed-forward network by ``N_s`` shared experts that every token uses and ``N_r`` routed experts
of which each token uses ``K_r``:

    h'_t   = u_t + sum_i FFN_i^(s)(u_t) + sum_i g_it FFN_i^(r)(u_t)          (12)
    g_it   = g'_it / sum_j g'_jt                                            (13)
    g'_it  = s_it if expert i is among the top K_r of token t, else 0       (14, 16)
    s_it   = sigmoid(u_t . e_i)                                             (15)

The top K_r are chosen by ``s_it + b_i`` (eq. 16, which seed 003 leaves out): a per-expert bias that
enters only the *selection*, never the gate value, and that is not trained by gradients. After every
training step it moves by ``gamma`` against the sign of the expert's load error: an expert that got
more than the mean number of tokens becomes a little less attractive, one that got fewer a little
more (the auxiliary-loss-free load balancing of Wang et al. 2024). ``MoE`` implements this, dispatching
each token only to the experts it selected; ``route_reference`` is the same equations token by token,
for tests and for the reader.

Decoders with MoE layers are ordinary ``anatomy.Transformer`` models whose blocks' ``mlp`` is replaced
(the block calls ``self.mlp(h)``), so everything else (attention, cache, generation, training) is the
dense model's code. ``moe_decoder`` builds one; ``matched_dense_config`` the dense model with the same
active parameters.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import replace

import torch
import torch.nn as nn

from anatomy.model import MLP, Config, Transformer

__all__ = [
    "MoE",
    "Routing",
    "effective_experts",
    "expert_token_table",
    "load_imbalance",
    "matched_dense_config",
    "moe_decoder",
    "moe_layers",
    "param_counts",
    "route_reference",
    "routing_of",
    "train_runs",
    "deepseek_v3_params",
    "DEEPSEEK_V3",
]


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_float(name: str, value, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value}")
    return value


class Routing:
    """One routing decision for T tokens: what the router computed (all detached).

    scores (T, N_r): the affinities s_it; bias (N_r,): b_i at the time; experts (T, K_r): the selected
    experts, best first by s + b; gates (T, K_r): the normalised gates g_it of the selected experts.
    """

    def __init__(self, scores, bias, experts, gates):
        self.scores, self.bias, self.experts, self.gates = scores, bias, experts, gates

    def load(self) -> torch.Tensor:
        """Tokens sent to each routed expert, (N_r,) int64."""
        return torch.bincount(self.experts.reshape(-1), minlength=self.scores.shape[-1])


class MoE(nn.Module):
    """DeepSeek-V3's MoE feed-forward layer: shared + routed SwiGLU experts, sigmoid top-k routing.

    ``moe(u)``: u (B, N, d) -> (B, N, d), the two sums of eq. 12 (the block adds the residual u_t).

    Args:
        config: the model's Config (d_model, mlp_bias, init_std; experts are its SwiGLU ``MLP``).
        n_routed: N_r, routed experts. n_shared: N_s, shared experts (0 allowed). top_k: K_r.
        d_expert: hidden width of each expert; default: the dense d_ff / (n_shared + top_k), so that the
            layer's active parameters equal the dense MLP's (plus the router's d_model * n_routed).
        bias_update_speed: gamma, the step of the load-balancing bias after each training forward pass;
            0 switches balancing off (the bias stays 0 and eq. 16 is eq. 14).
        route_scale: a constant factor on the gates (DeepSeek-V3's released config uses 2.5; the
            paper's equations have 1, the default).

    In training mode each forward pass counts as one training step: after routing the batch, it adds
    ``gamma * sign(mean load - load_i)`` to ``bias[i]`` and appends the load to ``load_history``. That
    matches DeepSeek-V3's "at the end of each step" when there is one forward pass per optimizer step
    (as in ``anatomy.train``). Evaluation mode never changes the bias.
    """

    def __init__(
        self,
        config: Config,
        n_routed: int = 8,
        n_shared: int = 1,
        top_k: int = 2,
        d_expert: int | None = None,
        *,
        bias_update_speed: float = 1e-3,
        route_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if not isinstance(config, Config):
            raise TypeError(f"config must be an anatomy.Config, got {type(config).__name__}")
        self.n_routed = _check_int("n_routed", n_routed, 1)
        self.n_shared = _check_int("n_shared", n_shared, 0)
        self.top_k = _check_int("top_k", top_k, 1)
        if self.top_k > self.n_routed:
            raise ValueError(f"top_k ({top_k}) must be <= n_routed ({n_routed})")
        if d_expert is None:
            d_expert = max(1, round(config.d_ff / (self.n_shared + self.top_k)))
        self.d_expert = _check_int("d_expert", d_expert, 1)
        self.bias_update_speed = _check_float("bias_update_speed", bias_update_speed)
        self.route_scale = _check_float("route_scale", route_scale, positive=True)
        self.d_model = config.d_model

        expert_config = replace(config, mlp="swiglu", d_ff=self.d_expert)
        # N_s shared experts of width d_e are one SwiGLU of width N_s * d_e: its hidden units are
        # the shared experts' hidden units side by side, and the down projection sums their outputs.
        self.shared = (
            MLP(replace(expert_config, d_ff=self.n_shared * self.d_expert)) if self.n_shared else None
        )
        self.experts = nn.ModuleList(MLP(expert_config) for _ in range(self.n_routed))
        self.centroids = nn.Parameter(torch.empty(self.n_routed, config.d_model))  # e_i of eq. 15
        self.register_buffer("bias", torch.zeros(self.n_routed))  # b_i of eq. 16: no gradient
        self.load_history: list[torch.Tensor] = []  # per training step: tokens per routed expert
        self.last_routing: Routing | None = None
        self.reset_parameters(config.init_std)

    def reset_parameters(self, std: float = 0.02, residual_std: float | None = None) -> None:
        """Normal(0, std) weights as in ``Transformer``; down projections get ``residual_std`` (or std)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for expert in self.all_experts():
            nn.init.normal_(expert.down_proj.weight, std=std if residual_std is None else residual_std)
        nn.init.normal_(self.centroids, std=std)
        self.bias.zero_()
        self.load_history.clear()

    def all_experts(self) -> list[nn.Module]:
        return ([self.shared] if self.shared is not None else []) + list(self.experts)

    def extra_repr(self) -> str:
        return (
            f"n_routed={self.n_routed}, n_shared={self.n_shared}, top_k={self.top_k}, "
            f"d_expert={self.d_expert}, bias_update_speed={self.bias_update_speed}, "
            f"route_scale={self.route_scale}"
        )

    def route(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router of eqs. 13-16 for u (T, d): scores s (T, N_r), selected experts (T, K), gates (T, K)."""
        scores = torch.sigmoid(u @ self.centroids.t())  # (T, N_r), eq. 15
        choice = scores.detach() + self.bias  # the bias only decides the selection (eq. 16)
        experts = choice.topk(self.top_k, dim=-1).indices  # (T, K)
        selected = scores.gather(1, experts)  # g'_it of the selected experts, from s without the bias
        gates = selected / selected.sum(-1, keepdim=True) * self.route_scale  # eq. 13
        return scores, experts, gates

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.shape[-1] != self.d_model:
            raise ValueError(
                f"x must be a tensor (..., d_model={self.d_model}), got "
                f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}"
            )
        shape = x.shape
        u = x.reshape(-1, self.d_model)  # (T, d)
        scores, experts, gates = self.route(u)
        self.last_routing = Routing(scores.detach(), self.bias.clone(), experts, gates.detach())

        # Dispatch: sort the T * K (token, expert) pairs by expert, so that each expert runs once, on a
        # contiguous slice of its tokens; then put the outputs back in (token, choice) order.
        flat = experts.reshape(-1)  # (T * K,)
        order = torch.argsort(flat, stable=True)
        load = torch.bincount(flat, minlength=self.n_routed)
        x_sorted = u[order // self.top_k]  # (T * K, d): token of each pair, grouped by expert
        outputs = [
            self.experts[i](chunk) for i, chunk in enumerate(x_sorted.split(load.tolist())) if len(chunk)
        ]
        y_sorted = torch.cat(outputs)  # (T * K, d)
        y = torch.empty_like(y_sorted).index_copy(0, order, y_sorted).view(-1, self.top_k, self.d_model)
        routed = (y * gates.unsqueeze(-1)).sum(1)  # (T, d): sum_i g_it FFN_i(u_t) over the chosen i
        out = routed if self.shared is None else routed + self.shared(u)
        if self.training:
            self._balance(load)
        return out.reshape(shape)

    def reference(self, u: torch.Tensor) -> torch.Tensor:
        """This layer computed by ``route_reference``, token by token: u (T, d) -> (T, d).

        The wide shared SwiGLU is cut back into its N_s experts, so eq. 12's sum over shared experts is
        evaluated literally.
        """
        d = self.d_expert

        def shared_expert(j: int):
            rows, s = slice(j * d, (j + 1) * d), self.shared

            def f(x):
                hidden = torch.nn.functional.silu(s.gate_proj.weight[rows] @ x) * (s.up_proj.weight[rows] @ x)
                return s.down_proj.weight[:, rows] @ hidden

            return f

        shared = [shared_expert(j) for j in range(self.n_shared)]
        routed = [lambda x, e=e: e(x[None])[0] for e in self.experts]
        return route_reference(u, self.centroids, self.bias, self.top_k, shared, routed, self.route_scale)

    @torch.no_grad()
    def _balance(self, load: torch.Tensor) -> None:
        """Auxiliary-loss-free balancing: b_i += gamma * sign(mean load - load_i)."""
        self.load_history.append(load.cpu())
        if self.bias_update_speed > 0:
            error = load.float().mean() - load.float()
            self.bias += self.bias_update_speed * torch.sign(error)


def route_reference(
    u: torch.Tensor,
    centroids: torch.Tensor,
    bias: torch.Tensor,
    top_k: int,
    shared: list,
    routed: list,
    route_scale: float = 1.0,
) -> torch.Tensor:
    """Eqs. 12-16 written out token by token (slow; for tests and for reading).

    u (T, d); centroids (N_r, d); bias (N_r,); shared and routed: lists of functions (d,) -> (d,).
    Returns (T, d): for each token the shared experts' outputs plus the gated routed experts' outputs
    (eq. 12 without the residual u_t).
    """
    T = u.shape[0]
    n_routed = centroids.shape[0]
    rows = []
    for t in range(T):
        s = [torch.sigmoid(u[t] @ centroids[i]) for i in range(n_routed)]  # eq. 15
        ranked = sorted(range(n_routed), key=lambda i: -(s[i] + bias[i]).item())  # eq. 16: by s + b
        chosen = set(ranked[:top_k])
        g_prime = [s[i] if i in chosen else torch.zeros(()) for i in range(n_routed)]  # eqs. 14, 16
        total = sum(g_prime[i] for i in chosen)
        g = [route_scale * g_prime[i] / total for i in range(n_routed)]  # eq. 13
        h = sum(f(u[t]) for f in shared) if shared else torch.zeros_like(u[t])
        for i in range(n_routed):
            if i in chosen:
                h = h + g[i] * routed[i](u[t])  # eq. 12
        rows.append(h)
    return torch.stack(rows)


# -------------------------------------------------------------------------------------------- models


def moe_layers(model: nn.Module) -> list[MoE]:
    """The MoE layers of a model, in order."""
    return [m for m in model.modules() if isinstance(m, MoE)]


def moe_decoder(
    config: Config,
    n_routed: int = 8,
    n_shared: int = 1,
    top_k: int = 2,
    d_expert: int | None = None,
    *,
    bias_update_speed: float = 1e-3,
    route_scale: float = 1.0,
) -> Transformer:
    """An ``anatomy.Transformer`` with every block's MLP replaced by an ``MoE`` layer.

    The model is built as the dense ``Transformer(config)`` first (so, under the same seed, attention,
    norms and embeddings start from the very same weights as the dense model's), then each ``mlp`` is
    replaced. Expert down projections get the same depth-scaled init as the dense model's.
    The mask in ``config`` decides the family: MoE works the same in a decoder, an encoder or a prefix LM.
    """
    model = Transformer(config)
    residual_std = config.init_std / math.sqrt(2 * config.n_layers)
    for block in model.layers:
        moe = MoE(
            config,
            n_routed,
            n_shared,
            top_k,
            d_expert,
            bias_update_speed=bias_update_speed,
            route_scale=route_scale,
        )
        moe.reset_parameters(config.init_std, residual_std)
        block.mlp = moe
    return model


def matched_dense_config(config: Config, moe: MoE | Transformer) -> Config:
    """The dense Config whose MLP has as many parameters as the MoE layer's active experts.

    d_ff = (n_shared + top_k) * d_expert: the same hidden units per token. The MoE model still has the
    router's extra d_model * n_routed parameters per layer (see ``param_counts``).
    """
    layer = moe if isinstance(moe, MoE) else moe_layers(moe)[0]
    return replace(config, mlp="swiglu", d_ff=(layer.n_shared + layer.top_k) * layer.d_expert)


def param_counts(model: Transformer) -> dict[str, int]:
    """Non-embedding parameters (Kaplan et al.'s N): total, and active per token (top_k routed experts)."""
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
    mean = load.mean()
    if mean <= 0:
        raise ValueError("load must contain at least one routed token")
    return float((load.max() - mean) / mean)


def effective_experts(load: torch.Tensor) -> float:
    """exp(entropy) of the load's distribution over experts: N_r when even, 1 when one expert gets all."""
    load = torch.as_tensor(load).double()
    if load.ndim != 1 or load.numel() == 0 or load.sum() <= 0:
        raise ValueError(f"load must be a 1-D tensor of counts with a positive sum, got {load}")
    p = load / load.sum()
    return float(torch.exp(-(p * p.clamp_min(1e-300).log()).sum()))


@torch.no_grad()
def routing_of(model: Transformer, input_ids: torch.Tensor) -> list[Routing]:
    """Run ``model`` on input_ids (B, N) in eval mode; return each MoE layer's routing of the B*N tokens."""
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
    (``param_counts``), ``tokens`` (targets trained on) and ``load`` (per MoE layer, a (steps, N_r)
    tensor of tokens sent to each routed expert at each training step; empty for a dense model).
    """
    from anatomy import data
    from anatomy import train as training

    if not isinstance(models, dict) or not models:
        raise ValueError("models must be a non-empty dict name -> model")
    for name in ("steps", "batch_size", "seq_len", "n_val_batches"):
        _check_int(name, locals()[name], 1)
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
            "params": param_counts(model),
            "tokens": history.tokens[-1],
            "load": [torch.stack(layer.load_history) for layer in moe_layers(model)],
        }
    return out


# DeepSeek-V3's released configuration (inference/configs/config_671B.json of deepseek-ai/DeepSeek-V3):
# multi-head latent attention, 3 dense layers, then 58 MoE layers of 1 shared + 256 routed experts, top 8.
DEEPSEEK_V3 = {
    "vocab_size": 129280, "dim": 7168, "inter_dim": 18432, "moe_inter_dim": 2048, "n_layers": 61,
    "n_dense_layers": 3, "n_heads": 128, "n_routed_experts": 256, "n_shared_experts": 1,
    "n_activated_experts": 8, "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64, "v_head_dim": 128,
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
    c = {**DEEPSEEK_V3, **(config or {})}
    d, H = c["dim"], c["n_heads"]
    attention = (
        d * c["q_lora_rank"] + c["q_lora_rank"]  # W_DQ and its norm
        + c["q_lora_rank"] * H * (c["qk_nope_head_dim"] + c["qk_rope_head_dim"])  # W_UQ (and rope part)
        + d * (c["kv_lora_rank"] + c["qk_rope_head_dim"]) + c["kv_lora_rank"]  # W_DKV, W_KR, norm
        + c["kv_lora_rank"] * H * (c["qk_nope_head_dim"] + c["v_head_dim"])  # W_UK, W_UV
        + H * c["v_head_dim"] * d  # W_O
    )
    per_layer = attention + 2 * d  # + the two RMSNorms of the block
    expert = 3 * d * c["moe_inter_dim"]
    router = c["n_routed_experts"] * (d + 1)
    n_moe = c["n_layers"] - c["n_dense_layers"]
    common = (
        c["n_layers"] * per_layer + c["n_dense_layers"] * 3 * d * c["inter_dim"]
        + 2 * c["vocab_size"] * d + d  # embeddings, output head, final norm
        + n_moe * (router + c["n_shared_experts"] * expert)
    )
    routed = n_moe * c["n_routed_experts"] * expert
    active_routed = n_moe * c["n_activated_experts"] * expert
    total = common + routed
    return {"total": total, "active": common + active_routed, "embedding": c["vocab_size"] * d,
            "routed_share": routed / total}
