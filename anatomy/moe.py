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
from dataclasses import replace

import torch
import torch.nn as nn

from anatomy._checks import check_float, check_instance, check_int, check_tensor
from anatomy.model import MLP, Config, Transformer

__all__ = ["MoE", "Routing", "moe_decoder", "moe_layers", "route_reference"]


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
        self.n_routed = check_int("n_routed", n_routed, lo=1)
        self.n_shared = check_int("n_shared", n_shared, lo=0)
        self.top_k = check_int("top_k", top_k, lo=1)
        if self.top_k > self.n_routed:
            raise ValueError(f"top_k ({top_k}) must be <= n_routed ({n_routed})")
        if d_expert is None:
            d_expert = max(1, round(config.d_ff / (self.n_shared + self.top_k)))
        self.d_expert = check_int("d_expert", d_expert, lo=1)
        self.bias_update_speed = check_float("bias_update_speed", bias_update_speed, lo=0)
        self.route_scale = check_float("route_scale", route_scale, lo=0, lo_open=True)
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
        check_float("std", std, lo=0)
        check_float("residual_std", residual_std, lo=0, none=True)
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
        check_tensor("x", x, kind="float")
        if x.shape[-1] != self.d_model:
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
    check_tensor("u", u, kind="float", dim=2)
    check_tensor("centroids", centroids, kind="float", dim=2)
    check_tensor("bias", bias, dim=1)
    if centroids.shape[1] != u.shape[1]:
        raise ValueError(f"centroids must be (N_r, d={u.shape[1]}), got {tuple(centroids.shape)}")
    if bias.shape[0] != centroids.shape[0]:
        raise ValueError(f"bias must have one entry per routed expert ({len(centroids)}), got {len(bias)}")
    check_int("top_k", top_k, lo=1, hi=centroids.shape[0])
    for name, experts in (("shared", shared), ("routed", routed)):
        if not isinstance(experts, (list, tuple)) or not all(callable(f) for f in experts):
            raise TypeError(f"{name} must be a list of functions (d,) -> (d,), got {experts!r}")
    if len(routed) != centroids.shape[0]:
        raise ValueError(f"routed must hold one function per centroid ({len(centroids)}), got {len(routed)}")
    check_float("route_scale", route_scale, lo=0, lo_open=True)
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
    check_instance("model", model, nn.Module, "a torch.nn.Module")
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
