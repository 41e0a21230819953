"""anatomy.train.eager_optimizer: torch's optimizers, the same update, without importing torch._dynamo."""

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from anatomy.train import eager_optimizer


def _fit(optimizer_class, **kwargs) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = optimizer_class(groups, lr=0.01, **kwargs)
    g = torch.Generator().manual_seed(1)
    for step in range(25):
        loss = model(torch.randn(8, 6, generator=g)).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for group in optimizer.param_groups:
            group["lr"] = 0.01 * (step + 1) / 25
        optimizer.step()
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (torch.optim.AdamW, {"betas": (0.9, 0.95)}),
        (torch.optim.Adam, {"foreach": True}),
        (torch.optim.SGD, {}),
    ],
)
def test_the_update_is_bitwise_torchs(cls, kwargs):
    eager = _fit(eager_optimizer(cls), **kwargs)
    plain = _fit(cls, **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(eager, plain))
    assert issubclass(eager_optimizer(cls), cls) and eager_optimizer(cls) is eager_optimizer(cls)


def test_training_imports_no_dynamo():
    """In a fresh process (this one may have imported it already): train() and an eager Adam step."""
    code = textwrap.dedent(
        """
        import sys
        import torch
        from anatomy import Config, Transformer
        from anatomy.train import eager_optimizer, train

        model = Transformer(Config(vocab_size=20, d_model=16, n_layers=1, n_heads=2, max_seq_len=8))
        ids = torch.randint(0, 20, (2, 9))
        train(model, lambda step: (ids[:, :-1], ids[:, 1:]), steps=2, progress=False)
        assert "torch._dynamo" not in sys.modules, "train() imported torch._dynamo"
        opt = eager_optimizer(torch.optim.Adam)(model.parameters(), foreach=True)
        out = model(ids)
        getattr(out, "logits", out).sum().backward()
        opt.step()
        opt.zero_grad()
        assert "torch._dynamo" not in sys.modules, "an eager Adam step imported torch._dynamo"
        torch.optim.Adam(model.parameters()).zero_grad()  # the check can fail: torch's own class imports it
        assert "torch._dynamo" in sys.modules
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)


@pytest.mark.parametrize("differentiable", [False, True])
def test_grad_mode_of_step_is_torchs(differentiable):
    """torch's step runs with gradients on exactly when the optimizer is ``differentiable`` (a step that
    can be differentiated through, e.g. for meta-learning); the eager step must too, or it would silently
    record no graph."""

    def step(optimizer_class):
        w = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
        p = w.clone() if differentiable else w.detach().clone().requires_grad_()
        p.grad = (2 * w).detach() if not differentiable else 2 * w
        optimizer_class([p], lr=0.1, differentiable=differentiable).step()
        if differentiable:
            p.sum().backward()
            return p.detach(), w.grad
        return p.detach(), p.grad_fn

    eager, plain = step(eager_optimizer(torch.optim.SGD)), step(torch.optim.SGD)
    assert torch.equal(eager[0], plain[0])
    if differentiable:
        assert torch.equal(eager[1], plain[1]) and not torch.equal(plain[1], torch.ones(3))
    else:
        assert eager[1] is None and plain[1] is None
