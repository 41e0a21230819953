"""One small deterministic training loop, used by every chapter.

AdamW, a learning-rate schedule, gradient clipping and a budget in steps, tokens or seconds.
The objective is a function ``loss_fn(model, batch)``, so the same loop trains a causal LM, a
masked LM, span corruption or a prefix LM.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anatomy._checks import check_bool, check_choice, check_float, check_int, check_positive_int, is_int
from anatomy.fused import _OneDNNLinears, linear_cross_entropy

__all__ = ["History", "eager_optimizer", "evaluate", "learning_rate", "next_token_loss", "train"]

SCHEDULES = ("cosine", "wsd", "constant")

Batch = Any  # (x, y), or whatever a custom loss_fn understands
LossFn = Callable[[nn.Module, Batch], "torch.Tensor | tuple[torch.Tensor, int]"]


def next_token_loss(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy (nats) and the number of targets.

    batch = (x, y): x (B, N) input ids, y (B, N) target ids, -100 where there is no target;
    model(x) returns logits (B, N, V).
    """
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError(f"batch must be a pair (x, y) of (B, N) id tensors, got {type(batch).__name__}")
    x, y = batch
    if not isinstance(y, torch.Tensor) or not isinstance(x, torch.Tensor) or y.shape != x.shape:
        raise ValueError(f"batch must be a pair (x, y) of id tensors of one shape, got {type(y).__name__}")
    head = _fusable_head(model) if torch.is_grad_enabled() else None
    if head is not None:  # training an anatomy Transformer: the LM head fused with the loss, same math
        with _OneDNNLinears():  # the model's products by oneDNN where it can (anatomy.fused)
            hidden = model(x, _head=False)  # the final hidden states (B, N, d), without the head
        loss = linear_cross_entropy(hidden, head.weight, y, ignore_index=-100)
    else:
        logits = model(x)  # (B, N, V)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=-100)
    return loss, int((y != -100).sum())


def _fusable_head(model: nn.Module) -> nn.Linear | None:
    """The LM head of an anatomy Transformer whose head and loss can run as one fused op, else None.

    Only a plain ``Transformer`` (not a subclass with its own forward, no forward hook) whose ``lm_head``
    is a float32 ``nn.Linear`` without bias and without hooks: its logits are then exactly
    ``hidden @ lm_head.weight.T``, and :func:`anatomy.fused.linear_cross_entropy` computes their
    cross-entropy and gradients chunk by chunk (the same matmul FLOPs, see ``objectives.train_step_flops``)
    without materialising the (B, N, vocab) logits. Gradients only: evaluation (no grad) keeps the plain
    path and its numbers.
    """
    from anatomy.model import Transformer  # noqa: PLC0415 (anatomy.model imports nothing from here)

    if (
        type(model).forward is not Transformer.forward
        or not isinstance(model, Transformer)
        or model._forward_hooks  # a hook on the model would see hidden states instead of logits
        or nn.modules.module._global_forward_hooks
    ):
        return None
    head = model._modules.get("lm_head")
    if (
        type(head) is not nn.Linear
        or head.bias is not None
        or head.weight.dtype != torch.float32
        or head._forward_hooks
        or head._forward_pre_hooks
    ):
        return None
    return head


@dataclass
class History:
    """What happened during training. Entry i of each list describes optimizer step i + 1."""

    step: list[int] = field(default_factory=list)  # steps done
    loss: list[float] = field(default_factory=list)  # training loss of the step's batch
    tokens: list[int] = field(default_factory=list)  # targets seen so far
    lr: list[float] = field(default_factory=list)  # learning rate of the step
    seconds: list[float] = field(default_factory=list)  # training time so far (evaluations excluded)
    evals: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # (steps done, eval_fn result)

    @property
    def final_loss(self) -> float:
        """Mean training loss over the last 5% of steps (at least one step)."""
        if not self.loss:
            return math.nan
        tail = self.loss[-max(1, math.ceil(0.05 * len(self.loss))) :]
        return sum(tail) / len(tail)

    def record(self, step: int, loss: float, tokens: int, lr: float, seconds: float) -> None:
        """Append one step."""
        self.step.append(step)
        self.loss.append(loss)
        self.tokens.append(tokens)
        self.lr.append(lr)
        self.seconds.append(seconds)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and numbers (JSON-ready), plus final_loss."""
        return {**asdict(self), "final_loss": self.final_loss}


def learning_rate(
    step: int,
    total_steps: int,
    *,
    lr: float = 3e-3,
    warmup: int | float = 0.05,
    schedule: str = "cosine",
    min_lr_ratio: float = 0.1,
) -> float:
    """The learning rate of step `step` (0-based) out of `total_steps`.

    Linear warmup over `warmup` steps (an int) or a fraction of total_steps (a float), then
    "cosine": cosine decay to min_lr_ratio * lr at the last step; "wsd" (warmup-stable-decay):
    constant, then linear decay to min_lr_ratio * lr over the last 20% of steps; "constant".
    """
    check_float("step", step, lo=0.0)  # a float evaluates the schedule between steps (for plots)
    check_positive_int("total_steps", total_steps)
    check_float("lr", lr, lo=0.0)
    _check_warmup(warmup)
    check_choice("schedule", schedule, SCHEDULES)
    check_float("min_lr_ratio", min_lr_ratio, lo=0.0, hi=1.0)
    warm = warmup if isinstance(warmup, int) else round(warmup * total_steps)
    if step < warm:
        return lr * (step + 1) / warm
    min_lr = min_lr_ratio * lr
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        progress = min(1.0, (step - warm) / max(1, total_steps - 1 - warm))
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)
    if schedule == "wsd":
        decay_steps = max(1, round(0.2 * total_steps))
        decay_start = max(warm, total_steps - decay_steps)
        if step < decay_start:
            return lr
        progress = min(1.0, (step - decay_start + 1) / max(1, total_steps - decay_start))
        return lr - progress * (lr - min_lr)
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


def _check_warmup(warmup) -> None:
    if not (
        (is_int(warmup) and warmup >= 0)
        or (isinstance(warmup, float) and 0.0 <= warmup < 1.0)  # NaN fails both comparisons
    ):
        raise ValueError(f"warmup must be an int >= 0 (steps) or a float in [0, 1), got {warmup!r}")


def _count_targets(batch: Batch) -> int | None:
    """Targets in a batch the loss did not count itself: y != -100 in (x, y) or batch["labels"]."""
    y = None
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[-1], torch.Tensor):
        y = batch[-1]
    elif isinstance(batch, dict):
        y = next((batch[k] for k in ("labels", "targets", "y") if k in batch), None)
    return None if y is None else int((y != -100).sum())


def _loss_and_count(out, batch: Batch, need_count: bool = False) -> tuple[torch.Tensor, int | None]:
    loss, n = out if isinstance(out, tuple) else (out, _count_targets(batch))
    if n is None and need_count:
        raise TypeError("a tokens budget needs loss_fn to return (loss, n_tokens), or batches of (x, y)")
    return loss, None if n is None else int(n)


def _batch_source(batches) -> Callable[[int], Batch]:
    if callable(batches):
        return batches
    if isinstance(batches, Iterable):
        iterator = iter(batches)
        return lambda step: next(iterator)
    raise TypeError(f"batches must be a callable step -> batch or an iterable, got {type(batches).__name__}")


def _progress_bar(total: float, unit: str, enabled: bool):
    """A plain-text tqdm bar on stdout, or None (progress=False or ANATOMY_PROGRESS=0).

    Not tqdm.auto: in a notebook that makes an ipywidget, which the static book stores as its first
    frame ("0%") and can only render with JavaScript from a CDN. Plain text works in a terminal,
    Jupyter, Colab and the book. myst-nb keeps every refresh as a line (``nb_merge_streams`` joins
    them with newlines), so when stdout is not a terminal the bar refreshes only every 10 s: a
    chapter's cell shows a start line, a few progress lines and the final one.
    """
    if not enabled or os.environ.get("ANATOMY_PROGRESS", "1") == "0":
        return None
    from tqdm import tqdm

    interval = 0.5 if sys.stdout.isatty() else 10.0
    return tqdm(total=total, unit=unit, file=sys.stdout, mininterval=interval, dynamic_ncols=True)


def _check_args(
    steps, tokens, seconds, lr, weight_decay, warmup, schedule, min_lr_ratio, grad_clip, eval_every
) -> tuple[str, float]:
    """Validate train's arguments; return the budget's (name, value)."""
    budgets = {"steps": steps, "tokens": tokens, "seconds": seconds}
    given = [name for name, value in budgets.items() if value is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one budget (steps, tokens or seconds), got {given or 'none'}")
    budget_name, budget = given[0], budgets[given[0]]
    if budget_name == "seconds":
        check_float("seconds", budget, lo=0.0, lo_open=True)
    else:
        check_positive_int(budget_name, budget)
    check_choice("schedule", schedule, SCHEDULES)
    _check_warmup(warmup)
    check_float("lr", lr, lo=0.0, lo_open=True)  # inf or NaN would make every parameter NaN at step 1
    check_float("weight_decay", weight_decay, lo=0.0)
    check_float("min_lr_ratio", min_lr_ratio, lo=0.0, hi=1.0)
    check_float("grad_clip", grad_clip, lo=0.0, lo_open=True, none=True)
    check_positive_int("eval_every", eval_every, none=True)
    return budget_name, budget


@functools.cache
def eager_optimizer(optimizer_class: type) -> type:
    """`optimizer_class` (a ``torch.optim`` optimizer) with the same update, minus its torch.compile hooks.

    torch wraps an optimizer's ``step``, ``zero_grad`` and ``add_param_group`` in decorators that import
    ``torch._dynamo`` on their first call (about a second of CPU, in every process that trains, forked
    workers included) to keep torch.compile from tracing them. Eager code never needs them: this subclass
    calls the undecorated methods, ``step`` with gradients off (on with ``differentiable=True``) as the
    decorator would, so the parameters it computes are bitwise the same. Not for use under torch.compile.
    Save its ``state_dict()`` (which loads into either class), not the optimizer object: the subclass is
    made here, so pickle cannot find it by name.
    """
    if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, torch.optim.Optimizer)):
        raise TypeError(f"optimizer_class must be a torch.optim.Optimizer class, got {optimizer_class!r}")
    step = inspect.unwrap(optimizer_class.step)

    def eager_step(self, closure=None):
        # torch's decorator: grad mode = the optimizer's `differentiable` (False for those without it)
        with torch.set_grad_enabled(bool(self.defaults.get("differentiable", False))):
            return step(self, closure)

    namespace = {
        "step": eager_step,
        "zero_grad": inspect.unwrap(optimizer_class.zero_grad),
        "add_param_group": inspect.unwrap(optimizer_class.add_param_group),
        "__doc__": f"{optimizer_class.__name__} without torch.compile hooks (anatomy.train.eager_optimizer).",
    }
    return type(optimizer_class.__name__, (optimizer_class,), namespace)


def train(
    model: nn.Module,
    batches: Callable[[int], Batch] | Iterable[Batch],
    *,
    steps: int | None = None,
    tokens: int | None = None,
    seconds: float | None = None,
    lr: float = 3e-3,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    warmup: int | float = 0.05,
    schedule: str = "cosine",
    min_lr_ratio: float = 0.1,
    grad_clip: float | None = 1.0,
    loss_fn: LossFn | None = None,
    eval_fn: Callable[[nn.Module], dict[str, float] | float] | None = None,
    eval_every: int | None = None,
    eval_at_start: bool = True,
    progress: bool = True,
    seed: int | None = None,
) -> History:
    """Train `model` in place with AdamW for exactly one budget: steps, tokens or seconds.

    batches: a function ``step -> batch`` or an iterable of batches; a batch is (x, y) with
        x, y (B, N) for the default loss, or anything `loss_fn` understands.
    loss_fn(model, batch): a scalar loss, or (loss, n_targets); default `next_token_loss`.
        Tokens are counted as targets: what loss_fn reports, else y != -100 in (x, y).
    Weight decay applies to parameters with dim >= 2 (matrices and embeddings, as in nanoGPT);
    biases and norm gains are not decayed. `learning_rate` gives the schedule.
    eval_fn(model) -> dict (or float) runs under no_grad in eval mode at step 0 (unless
    `eval_at_start` is False), every `eval_every` steps and at the end (only at the end if eval_every
    is None).

    Same seed, same initial model and same batches give an identical History (on CPU), for a
    steps or tokens budget. A tokens budget sets the schedule's length to tokens / (mean tokens
    per step so far), exact for fixed-size batches. A `seconds` budget is NOT deterministic: the
    schedule's length is re-estimated at every step as seconds / (mean time per step so far), and
    the number of steps depends on the machine's speed.
    """
    budget_name, budget = _check_args(
        steps, tokens, seconds, lr, weight_decay, warmup, schedule, min_lr_ratio, grad_clip, eval_every
    )
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"betas must be a pair of floats, got {betas!r}")
    for beta in betas:
        check_float("betas", beta, lo=0.0, hi=1.0, hi_open=True)
    for name, fn in (("loss_fn", loss_fn), ("eval_fn", eval_fn)):
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} must be callable or None, got {type(fn).__name__}")
    check_bool("eval_at_start", eval_at_start)
    check_bool("progress", progress)
    check_int("seed", seed, none=True)
    if seed is not None:
        torch.manual_seed(seed)
    loss_fn = loss_fn or next_token_loss
    get_batch = _batch_source(batches)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = eager_optimizer(torch.optim.AdamW)(
        [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=lr,
        betas=betas,
        # one fused kernel per parameter (torch's fused AdamW; the same update up to float32 rounding)
        fused=all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params),
    )
    history = History()

    def run_eval(step: int) -> None:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            result = eval_fn(model)
        model.train(was_training)
        history.evals.append((step, result if isinstance(result, dict) else {"loss": float(result)}))

    if eval_fn is not None and eval_every is not None and eval_at_start:
        run_eval(0)
    bar = _progress_bar(budget, {"steps": "step", "tokens": "tok", "seconds": "s"}[budget_name], progress)
    model.train()
    step, seen, elapsed = 0, 0, 0.0  # steps done, targets seen, training seconds
    used = lambda: {"steps": step, "tokens": seen, "seconds": elapsed}[budget_name]
    while used() < budget:
        start = time.perf_counter()
        try:
            batch = get_batch(step)
        except StopIteration:
            warnings.warn(
                f"batches ran out after {step} steps, before the {budget_name} budget", stacklevel=2
            )
            break
        loss, n = _loss_and_count(loss_fn(model, batch), batch, need_count=budget_name == "tokens")
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            after = f" (after {step} updates, the last with lr={history.lr[-1]:.3g})" if step else ""
            raise FloatingPointError(
                f"training diverged: the loss of step {step + 1} is {loss_value}{after}; "
                "lower lr, clip gradients or check the data"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        seen += n or 0
        total = _schedule_length(budget_name, budget, step, seen, elapsed + time.perf_counter() - start)
        rate = learning_rate(step, total, lr=lr, warmup=warmup, schedule=schedule, min_lr_ratio=min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = rate
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        elapsed += time.perf_counter() - start
        step += 1

        history.record(step, loss_value, seen, rate, elapsed)
        if bar is not None:
            bar.set_postfix(loss=f"{history.loss[-1]:.4f}", lr=f"{rate:.2e}", refresh=False)
            bar.update(min(budget, used()) - bar.n)
        if eval_fn is not None and eval_every is not None and step % eval_every == 0:
            run_eval(step)
    if bar is not None:
        bar.close()
    # The last update has no loss after it to show a divergence: look at the parameters themselves.
    if step and not all(bool(torch.isfinite(p).all()) for p in params):
        raise FloatingPointError(
            f"training diverged: step {step} (the last, lr={history.lr[-1]:.3g}) made some parameters "
            "NaN or inf; lower lr or clip gradients"
        )
    if eval_fn is not None and (not history.evals or history.evals[-1][0] != step):
        run_eval(step)
    return history


def _schedule_length(budget_name: str, budget: float, step: int, seen: int, elapsed: float) -> int:
    """The number of steps the schedule is stretched over (exact for steps, estimated otherwise)."""
    if budget_name == "steps":
        return int(budget)
    if budget_name == "tokens":  # steps needed at the mean targets per step so far
        return max(step + 1, math.ceil(budget * (step + 1) / max(seen, 1)))
    return max(step + 1, round(budget * (step + 1) / elapsed))  # steps that fit at the mean speed so far


def evaluate(
    model: nn.Module,
    batches: Callable[[int], Batch] | Iterable[Batch],
    n_batches: int,
    loss_fn: LossFn | None = None,
) -> float:
    """Mean loss over `n_batches` batches (steps 0..n_batches-1 of a batch function), no gradients.

    Weighted by the number of targets when loss_fn reports it (the default does). The model is put
    in eval mode and returned to its previous mode.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_positive_int("n_batches", n_batches)
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable or None, got {type(loss_fn).__name__}")
    loss_fn = loss_fn or next_token_loss
    get_batch = _batch_source(batches)
    was_training = model.training
    model.eval()
    total, weight = 0.0, 0
    try:
        with torch.no_grad():
            for i in range(n_batches):
                batch = get_batch(i)
                out = loss_fn(model, batch)
                loss, n = out if isinstance(out, tuple) else (out, 1)
                total += loss.item() * int(n)
                weight += int(n)
    finally:
        model.train(was_training)
    if weight == 0:
        raise ValueError(
            f"batches: the {n_batches} batches hold no target (every label is -100), so there is no mean loss"
        )
    return total / weight
