"""The MoE layer against DeepSeek-V3's equations 12-16 written out token by token, and its balancing."""

from __future__ import annotations

import pytest
import torch

from anatomy import train as training
from anatomy.experiments.experts import (
    active_param_counts,
    expert_token_table,
    load_imbalance,
    matched_dense_config,
    routing_of,
)
from anatomy.model import Config, Transformer
from anatomy.moe import MoE, moe_decoder, moe_layers


def small_config(**kw) -> Config:
    base = dict(vocab_size=50, d_model=16, n_layers=2, n_heads=2, max_seq_len=32)
    base.update(kw)
    return Config(**base)


def make_moe(seed=0, dtype=torch.float64, **kw) -> MoE:
    torch.manual_seed(seed)
    args = dict(n_routed=6, n_shared=2, top_k=3, d_expert=8)
    args.update(kw)
    moe = MoE(small_config(), **args).to(dtype)
    with torch.no_grad():  # larger centroids than the init, so gates differ clearly between experts
        moe.centroids.normal_(std=0.5)
    return moe


def reference(moe: MoE, u: torch.Tensor) -> torch.Tensor:
    return moe.reference(u)


# ------------------------------------------------------------------------------------------- equations


@pytest.mark.parametrize("n_shared,top_k,route_scale", [(2, 3, 1.0), (0, 1, 1.0), (1, 6, 2.5), (1, 2, 1.0)])
def test_matches_equations_token_by_token(n_shared, top_k, route_scale):
    moe = make_moe(n_shared=n_shared, top_k=top_k, route_scale=route_scale).eval()
    u = torch.randn(2, 5, 16, dtype=torch.float64)
    got = moe(u)
    want = reference(moe, u.reshape(-1, 16)).reshape(2, 5, 16)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_matches_equations_with_a_bias_that_changes_the_selection():
    moe = make_moe().eval()
    u = torch.randn(40, 16, dtype=torch.float64)
    before = moe.route(u)[1]
    with torch.no_grad():
        moe.bias.copy_(torch.tensor([0.0, 0.3, -0.2, 0.5, -0.4, 0.1], dtype=torch.float64))
    after = moe.route(u)[1]
    assert not torch.equal(before.sort(-1).values, after.sort(-1).values)  # the bias did change choices
    torch.testing.assert_close(moe(u), reference(moe, u), rtol=1e-10, atol=1e-12)


def test_bias_enters_selection_only_not_gate_values():
    moe = make_moe(top_k=2).eval()
    u = torch.randn(30, 16, dtype=torch.float64)
    with torch.no_grad():
        moe.bias.zero_()
        moe.bias[4] = 10.0  # expert 4 is now selected for every token
    scores, experts, gates = moe.route(u)
    assert (experts == 4).any(-1).all()
    # gate = s_i / sum of the selected s_j: the unbiased affinities, not s + b
    selected = scores.gather(1, experts)
    torch.testing.assert_close(gates, selected / selected.sum(-1, keepdim=True))
    assert gates.sum(-1).sub(1).abs().max() < 1e-12  # eq. 13: normalised


def test_sigmoid_affinities_and_top_k():
    moe = make_moe().eval()
    u = torch.randn(7, 16, dtype=torch.float64)
    scores, experts, gates = moe.route(u)
    torch.testing.assert_close(scores, torch.sigmoid(u @ moe.centroids.T))
    assert experts.shape == (7, moe.top_k) and gates.shape == (7, moe.top_k)
    for t in range(7):  # the selected experts are the top-k affinities (bias 0)
        assert set(experts[t].tolist()) == set(scores[t].topk(moe.top_k).indices.tolist())


def test_gradients_reach_router_and_selected_experts_only():
    moe = make_moe(dtype=torch.float32, n_routed=8, top_k=2).train()
    moe.bias_update_speed = 0.0
    u = torch.randn(1, 1, 16)  # one token: exactly two routed experts are used
    moe(u).sum().backward()
    chosen = set(moe.last_routing.experts.reshape(-1).tolist())
    assert moe.centroids.grad is not None
    for i, e in enumerate(moe.experts):
        used = e.up_proj.weight.grad is not None and e.up_proj.weight.grad.abs().sum() > 0
        assert used == (i in chosen)
        assert (moe.centroids.grad[i].abs().sum() > 0) == (i in chosen)  # only chosen experts' e_i learn
    assert not moe.bias.requires_grad


def test_top_1_normalised_gate_is_constant():
    """With K_r = 1 eq. 13 makes every gate s/s = 1: the router then gets no gradient at all. The two terms
    of d(s/s)/ds = 1/s - s/s^2 cancel only up to rounding (in float32 a residue of ~1e-11 was seen), so, in
    float64, "none" means below 1e-9 of the gradient the same router gets with K_r = 2, where the gates
    depend on the scores."""
    u = torch.randn(4, 16, dtype=torch.float64)
    grads = {}
    for top_k in (1, 2):
        moe = make_moe(n_routed=8, top_k=top_k).train()
        moe(u).sum().backward()
        grads[top_k] = moe.centroids.grad.abs().max().item()
        if top_k == 1:
            assert torch.equal(moe.last_routing.gates, torch.ones(4, 1, dtype=torch.float64))
    assert grads[2] > 1e-7, grads  # the comparison means something: with K_r = 2 the router is trained
    assert grads[1] <= 1e-9 * grads[2], grads


# ------------------------------------------------------------------------------------------- balancing


def test_bias_update_follows_sign_of_load_error():
    moe = make_moe(dtype=torch.float32, bias_update_speed=0.01).train()
    u = torch.randn(64, 16)
    moe(u)
    load = moe.load_history[-1].float()
    expected = 0.01 * torch.sign(load.mean() - load)
    torch.testing.assert_close(moe.bias, expected)
    assert int(load.sum()) == 64 * moe.top_k
    # overloaded experts went down, underloaded up
    assert (moe.bias[load > load.mean()] < 0).all() and (moe.bias[load < load.mean()] > 0).all()


def test_eval_mode_and_zero_speed_leave_bias_alone():
    moe = make_moe(dtype=torch.float32, bias_update_speed=0.01).eval()
    moe(torch.randn(10, 16))
    assert moe.bias.abs().sum() == 0 and moe.load_history == []
    moe = make_moe(dtype=torch.float32, bias_update_speed=0.0).train()
    moe(torch.randn(10, 16))
    assert moe.bias.abs().sum() == 0 and len(moe.load_history) == 1


def test_balancing_bias_evens_out_a_skewed_router():
    """A router that prefers expert 0 overloads it; the sign-of-error bias updates even the load out."""
    torch.manual_seed(0)
    moe = MoE(small_config(), n_routed=4, n_shared=0, top_k=1, d_expert=4, bias_update_speed=0.005)
    with torch.no_grad():
        moe.centroids.copy_(torch.randn(4, 16) * 0.3)
        moe.centroids[0] += 0.3
    u = torch.randn(512, 16) + 0.3  # the tokens' mean direction favours expert 0
    with torch.no_grad():
        first = load_imbalance(moe.route(u)[1].reshape(-1).bincount(minlength=4))
        moe.train()
        for _ in range(300):
            moe(u)
        late = max(load_imbalance(load) for load in moe.load_history[-50:])
    assert first > 0.5 and late < 0.15
    assert moe.bias[0] < 0  # the favoured expert was made less attractive


def test_effective_experts():
    from anatomy.experiments.experts import effective_experts

    assert effective_experts(torch.tensor([3, 3, 3, 3])) == pytest.approx(4.0)
    assert effective_experts(torch.tensor([9, 0, 0])) == pytest.approx(1.0)
    assert 1.0 < effective_experts(torch.tensor([5, 1, 1])) < 3.0
    with pytest.raises(ValueError, match="load"):
        effective_experts(torch.zeros(3))


def test_load_imbalance():
    assert load_imbalance(torch.tensor([5, 5, 5, 5])) == 0.0
    assert load_imbalance(torch.tensor([8, 0, 0, 0])) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="load"):
        load_imbalance(torch.zeros(3))
    with pytest.raises(ValueError, match="load"):
        load_imbalance(torch.ones(2, 2))


# -------------------------------------------------------------------------------------------- models


def test_moe_decoder_shares_init_with_dense_and_counts_parameters():
    cfg = small_config()
    torch.manual_seed(3)
    moe_model = moe_decoder(cfg, n_routed=4, n_shared=1, top_k=1, d_expert=8)
    dense_cfg = matched_dense_config(cfg, moe_model)
    assert dense_cfg.d_ff == 16
    torch.manual_seed(3)
    dense = Transformer(cfg)
    # attention and embeddings start identical: the MLP is the only difference
    attn_moe, attn_dense = moe_model.layers[0].self_attn, dense.layers[0].self_attn
    torch.testing.assert_close(attn_moe.q_proj.weight, attn_dense.q_proj.weight)
    counts = active_param_counts(moe_model)
    dense_model = Transformer(dense_cfg)
    router = cfg.n_layers * 4 * cfg.d_model
    assert counts["active"] == dense_model.num_params() + router
    per_expert = 3 * cfg.d_model * 8
    assert counts["total"] - counts["active"] == cfg.n_layers * 3 * per_expert
    dense_counts = active_param_counts(dense_model)
    assert len(moe_layers(moe_model)) == cfg.n_layers and dense_counts["total"] == dense_counts["active"]


@pytest.mark.parametrize("mask", ["causal", "bidirectional", "prefix"])
def test_moe_works_in_every_family(mask):
    cfg = small_config(mask=mask)
    model = moe_decoder(cfg, n_routed=4, n_shared=1, top_k=2).eval()
    ids = torch.randint(0, 50, (2, 9))
    assert model(ids).shape == (2, 9, 50)
    if mask == "causal":  # still causal: later tokens do not change earlier outputs
        longer = torch.cat([ids, torch.randint(0, 50, (2, 3))], 1)
        torch.testing.assert_close(model(longer)[:, :9], model(ids), rtol=1e-5, atol=1e-5)


def test_cached_generation_matches_full_forward():
    model = moe_decoder(small_config(), n_routed=4, n_shared=1, top_k=2).eval()
    ids = torch.randint(0, 50, (1, 10))
    cache = model.new_cache()
    step = torch.cat([model(ids[:, :6], cache=cache), model(ids[:, 6:], cache=cache)], 1)
    torch.testing.assert_close(step, model(ids), rtol=1e-5, atol=1e-5)


def test_trains_deterministically_and_learns():
    cfg = small_config()
    ids = torch.arange(400) % 7  # a periodic sequence: easy to learn

    def run():
        torch.manual_seed(0)
        model = moe_decoder(cfg, n_routed=4, n_shared=1, top_k=2, bias_update_speed=0.01)
        batches = lambda step: (ids[None, step % 7 : step % 7 + 24], ids[None, step % 7 + 1 : step % 7 + 25])
        hist = training.train(model, batches, steps=40, lr=1e-2, progress=False)
        return model, hist

    m1, h1 = run()
    m2, h2 = run()
    assert h1.loss == h2.loss
    assert h1.loss[-1] < 0.5 * h1.loss[0]
    assert torch.equal(moe_layers(m1)[0].bias, moe_layers(m2)[0].bias)
    assert len(moe_layers(m1)[0].load_history) == 40


def test_routing_of_and_expert_token_table():
    cfg = small_config()
    model = moe_decoder(cfg, n_routed=4, n_shared=1, top_k=2)
    ids = torch.randint(0, 50, (3, 8))
    routings = routing_of(model, ids)
    assert len(routings) == 2 and model.training  # mode restored
    assert routings[0].experts.shape == (24, 2)
    table = expert_token_table(routings, ids, 50)
    assert table.shape == (50, 4) and int(table.sum()) == 2 * 24
    assert int(expert_token_table(routings[0], ids, 50, rank=None).sum()) == 2 * 24
    for t in range(3):  # the table counts each token id's first choices
        tok = int(ids.reshape(-1)[t])
        assert table[tok, routings[0].experts[t, 0]] >= 1
    with pytest.raises(ValueError, match="MoE"):
        routing_of(Transformer(cfg), ids)


# ---------------------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(n_routed=0), ValueError, "n_routed"),
        (dict(n_routed=2.5), TypeError, "n_routed"),
        (dict(top_k=9, n_routed=8), ValueError, "top_k"),
        (dict(n_shared=-1), ValueError, "n_shared"),
        (dict(d_expert=0), ValueError, "d_expert"),
        (dict(bias_update_speed=-1.0), ValueError, "bias_update_speed"),
        (dict(bias_update_speed="fast"), TypeError, "bias_update_speed"),
        (dict(route_scale=0.0), ValueError, "route_scale"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        MoE(small_config(), **kwargs)


def test_bad_config_and_input():
    with pytest.raises(TypeError, match="config"):
        MoE({"d_model": 16})
    moe = MoE(small_config())
    with pytest.raises(ValueError, match="d_model"):
        moe(torch.randn(2, 3, 8))


def test_default_d_expert_matches_dense_width():
    cfg = small_config(d_model=96)  # swiglu d_ff = 256
    moe = MoE(cfg, n_routed=8, n_shared=1, top_k=3)
    assert moe.d_expert == 64 and matched_dense_config(cfg, moe).d_ff == 256


def test_deepseek_v3_parameter_count_matches_the_report():
    from anatomy.experiments.experts import deepseek_v3_params

    p = deepseek_v3_params()
    assert round(p["total"] / 1e9) == 671
    # the report's "37B activated" (36.5B to 37.5B once rounded) lies between the count without the input
    # embedding row (a lookup) and the count with it
    assert (p["active"] - p["embedding"]) / 1e9 < 37.5 and p["active"] / 1e9 >= 36.5
    assert p["embedding"] == 129280 * 7168
    assert 0.95 < p["routed_share"] < 0.99
    # fewer routed experts: fewer total parameters, the same active ones
    q = deepseek_v3_params({"n_routed_experts": 128})
    assert q["total"] < p["total"] and abs(q["active"] - p["active"]) < 1e8


def test_train_runs_records_loads_for_moe_only():
    from anatomy.experiments.experts import train_runs

    cfg = small_config()
    ids = torch.arange(600) % 11
    torch.manual_seed(0)
    models = {"dense": Transformer(cfg), "moe": moe_decoder(cfg, n_routed=4, n_shared=1, top_k=2)}
    runs = train_runs(models, ids[:500], ids[500:], steps=5, batch_size=2, seq_len=16, n_val_batches=2)
    assert runs["dense"]["load"] == [] and runs["moe"]["load"][0].shape == (5, 4)
    assert runs["moe"]["tokens"] == runs["dense"]["tokens"] == 5 * 2 * 16
    assert runs["moe"]["load"][0].sum(1).eq(2 * 16 * 2).all()  # every token sent to top_k experts
    with pytest.raises(ValueError, match="steps"):
        train_runs(models, ids[:500], ids[500:], steps=0, batch_size=2, seq_len=16)
