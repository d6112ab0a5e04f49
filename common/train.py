"""The generic supervised training loop, its history and its safeguards.

``fit`` covers the ordinary case (batches of ``(x, y)``, a loss, an optimizer). Papers whose
training procedure *is* the contribution (GAN, PPO, diffusion) write their own loop and reuse
the pieces here: :class:`History`, :func:`evaluate`, :func:`check_finite`, :func:`save_checkpoint`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from .progress import progress


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; the message names the step and learning rate."""


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose arg-max equals the label (a 0-d tensor, no host sync)."""
    if logits.dim() < 2 or logits.shape[0] != y.shape[0]:
        raise ValueError(f"accuracy expects logits (N, K) and labels (N,), got {tuple(logits.shape)} "
                         f"and {tuple(y.shape)}")
    return (logits.argmax(1) == y).float().mean()


class History:
    """Metrics logged during training: a list of records ``{"step", "epoch", name: value, ...}``."""

    def __init__(self, records: list[dict] | None = None):
        self.records: list[dict] = list(records or [])

    def log(self, **values) -> None:
        """Append one record (tensors are turned into floats)."""
        self.records.append({k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in values.items()})

    def series(self, name: str) -> tuple[list, list]:
        """``(steps, values)`` of every record holding ``name``."""
        rows = [r for r in self.records if name in r]
        if not rows:
            raise KeyError(f"no metric {name!r} in the history; logged: {sorted(self.names())}")
        return [r["step"] for r in rows], [r[name] for r in rows]

    def last(self, name: str):
        """The most recent value of ``name``."""
        return self.series(name)[1][-1]

    def names(self) -> set[str]:
        """Every metric name logged so far."""
        return {k for r in self.records for k in r} - {"step", "epoch"}

    def __repr__(self) -> str:
        return f"History({len(self.records)} records, metrics {sorted(self.names())})"


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Iterable, loss_fn: Callable = F.cross_entropy,
             metrics: dict[str, Callable] | None = None) -> dict[str, float]:
    """Mean loss and metrics of ``model`` over ``loader`` (weighted by batch size), in eval mode."""
    metrics = {"acc": accuracy} if metrics is None else metrics
    was_training = model.training
    model.eval()
    dev = _model_device(model)
    totals: dict[str, torch.Tensor] = {}
    count = 0
    for x, y in loader:
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        out = model(x)
        n = y.shape[0]
        for name, fn in {"loss": loss_fn, **metrics}.items():
            totals[name] = totals.get(name, 0.0) + fn(out, y).detach().float() * n
        count += n
    model.train(was_training)
    if count == 0:
        raise ValueError("evaluate: the loader yielded no batches")
    return {k: (v / count).item() for k, v in totals.items()}


def check_finite(loss: torch.Tensor, step: int, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Raise :class:`NonFiniteLossError` if ``loss`` holds a NaN/inf, naming its step and learning rate.

    ``loss`` is one loss or a 1-D tensor of consecutive steps' losses, the first taken at ``step``.
    """
    losses = loss.reshape(-1)
    finite = torch.isfinite(losses)
    if not finite.all():
        bad = int((~finite).nonzero()[0])
        lr = optimizer.param_groups[0].get("lr") if optimizer is not None else None
        raise NonFiniteLossError(f"non-finite loss {losses[bad].item()} at step {step + bad} (learning rate {lr}); "
                                 "lower the learning rate or clip gradients")


def save_checkpoint(path: str | Path, model: torch.nn.Module, optimizer=None, scheduler=None,
                    **state) -> None:
    """Atomically save model, optimizer, scheduler and extra ``state`` (plain Python/tensors)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"model": model.state_dict(), **state}
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        payload["scheduler"] = scheduler.state_dict()
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer=None, scheduler=None) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``); return it."""
    payload = torch.load(path, map_location=_model_device(model), weights_only=True)
    model.load_state_dict(payload["model"])
    if optimizer is not None and "optimizer" in payload:
        optimizer.load_state_dict(payload["optimizer"])
    if scheduler is not None and "scheduler" in payload:
        scheduler.load_state_dict(payload["scheduler"])
    return payload


def _model_device(model: torch.nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def fit(model: torch.nn.Module, train_loader, *, optimizer: torch.optim.Optimizer,
        loss_fn: Callable = F.cross_entropy, epochs: int = 1, max_steps: int | None = None,
        val_loader=None, eval_every: int | None = None, metrics: dict[str, Callable] | None = None,
        clip_grad: float | None = None, scheduler=None, amp: bool | None = None,
        checkpoint: str | Path | None = None, resume: bool = False, progress_bar: bool = True,
        desc: str | None = None, history: History | None = None, guard_every: int = 50,
        eval_each_epoch: bool = True) -> History:
    """Train ``model`` on batches ``(x, y)`` from ``train_loader``; return a :class:`History`.

    - ``epochs`` passes (or stop after ``max_steps`` optimizer steps); ``scheduler.step()`` per step.
    - Every ``eval_every`` steps and at the end of each epoch, ``val_loader`` is evaluated
      (``val_loss`` and ``val_<metric>``); train loss is logged as a running mean per interval.
      With ``eval_each_epoch=False`` the epoch ends are skipped (only the last one is kept), for
      loaders whose "epochs" are tiny (a few images repeated with augmentation).
    - ``amp`` (default: on CUDA) uses bf16 autocast; ``clip_grad`` clips the global grad norm.
    - A NaN/inf loss raises :class:`NonFiniteLossError` naming its step and the learning rate;
      losses are checked in bulk every ``guard_every`` steps and before each evaluation, so the
      loop never waits on the device for the check.
    - ``checkpoint`` saves model/optimizer/scheduler/history/RNG at each epoch's end;
      with ``resume`` a run continues from it and ends where an uninterrupted run would.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be positive, got {max_steps!r}")
    if eval_every is not None and eval_every < 1:
        raise ValueError(f"eval_every must be positive, got {eval_every!r}")
    dev = _model_device(model)
    amp = (dev.type == "cuda") if amp is None else amp
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16) if amp else nullcontext()
    metrics = {"acc": accuracy} if metrics is None else metrics
    hist = history or History()
    step, start_epoch = 0, 0
    gen = getattr(train_loader, "generator", None)
    if checkpoint is not None and resume and Path(checkpoint).exists():
        state = load_checkpoint(checkpoint, model, optimizer, scheduler)
        step, start_epoch = state["step"], state["epoch"]
        hist.records = list(state["history"])
        torch.set_rng_state(state["rng"])
        if gen is not None and "loader_rng" in state:
            gen.set_state(state["loader_rng"])
    total = epochs * len(train_loader) if hasattr(train_loader, "__len__") else None
    if max_steps is not None:
        total = min(total, max_steps) if total else max_steps
    bar = progress(total=total, desc=desc or "train", initial=step, disable=not progress_bar)

    def run_eval(epoch: int, running: list) -> None:
        row = {"step": step, "epoch": epoch}
        if running:
            row["train_loss"] = torch.stack(running).mean()
            running.clear()
        if val_loader is not None:
            row.update({f"val_{k}": v for k, v in evaluate(model, val_loader, loss_fn, metrics).items()})
        hist.log(**row)
        bar.set_postfix({k: f"{v:.4g}" for k, v in hist.records[-1].items() if k not in ("step", "epoch")})

    model.train()
    done = False
    pending: list[torch.Tensor] = []  # losses not yet checked for NaN/inf (checked in bulk: no per-step sync)

    def guard() -> None:
        if pending:
            check_finite(torch.stack(pending), step - len(pending), optimizer)
            pending.clear()

    running: list[torch.Tensor] = []  # losses since the last evaluation
    for epoch in range(start_epoch, epochs):
        for x, y in train_loader:
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            with autocast:
                loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            step += 1
            loss = loss.detach().float()
            running.append(loss)
            pending.append(loss)
            bar.update(1)
            if step % guard_every == 0:
                guard()
            if eval_every is not None and step % eval_every == 0:
                guard()
                run_eval(epoch, running)
            if max_steps is not None and step >= max_steps:
                done = True
                break
        guard()
        last = done or epoch == epochs - 1
        if (eval_each_epoch or last) and (running or eval_every is None):
            run_eval(epoch + 1, running)
        if checkpoint is not None:
            save_checkpoint(checkpoint, model, optimizer, scheduler, step=step, epoch=epoch + 1,
                            history=hist.records, rng=torch.get_rng_state(),
                            **({"loader_rng": gen.get_state()} if gen is not None else {}))
        if done:
            break
    bar.close()
    return hist
