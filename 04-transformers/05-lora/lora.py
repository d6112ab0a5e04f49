"""LoRA: low-rank adaptation of a frozen pre-trained model (Hu et al. 2021).

A dense layer's pre-trained weight W0 (d x k) is frozen; its change during adaptation is learned as a product
of two thin matrices, Delta W = B A with B (d x r) and A (r x k), r << min(d, k). The forward pass is the
paper's eq. (3), h = W0 x + Delta W x, with Delta W x scaled by alpha / r (Sec. 4.1). A starts random
Gaussian and B at zero, so the adapted model equals the pre-trained one before the first step. After
training, W = W0 + (alpha / r) B A can be stored in place of W0 (``merge``), so the adapted model costs no
extra inference time, and subtracting B A recovers W0 for another task (``unmerge``; Sec. 4.1, "No
Additional Inference Latency").

Sec. 4.2 adapts only the attention matrices W_q, W_v (and in Sec. 7.1 compares the others). The GPT of 4.4
computes q, k and v with ONE fused ``c_attn = nn.Linear(C, 3C)`` whose output rows are [q; k; v]; adapting
"W_q and W_v" there means a separate low-rank update on the first and third block of output rows and none on
the second. :class:`LoRALinear` therefore takes the number of output blocks and which of them are adapted.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

import common
import common.bench
from common.checks import check_float, check_int, check_tensor

TARGETS = ("q", "k", "v", "o")  # W_q, W_k, W_v (blocks 0, 1, 2 of c_attn) and W_o (attn.c_proj)


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus trainable low-rank updates: y = W0 x + b + (alpha / r) B A x (eq. 3).

    ``blocks`` cuts the output rows into that many equal blocks and ``adapt`` lists the blocks that get their
    own pair (A_i, B_i) (default: all of them); the others keep W0's rows untouched. A_i is (r, in) drawn from
    N(0, 1/in) (the paper: "random Gaussian", no variance given), B_i is (out / blocks, r) and starts at zero.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, blocks: int = 1, adapt=None):
        super().__init__()
        if not isinstance(base, nn.Linear) or isinstance(base, LoRALinear):
            raise ValueError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        check_int("blocks", blocks, low=1)
        if base.out_features % blocks:
            raise ValueError(f"out_features={base.out_features} must be divisible by blocks={blocks}")
        rows = base.out_features // blocks
        adapt = tuple(range(blocks)) if adapt is None else tuple(adapt)
        if not adapt or len(set(adapt)) != len(adapt) or any(
                isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < blocks for i in adapt):
            raise ValueError(f"adapt must list distinct block indices in [0, {blocks}), got {adapt}")
        self.r = check_int("r (rank)", r, low=1, high=min(base.in_features, rows))
        self.alpha = check_float("alpha", alpha, 0.0, low_open=True)
        self.scale = self.alpha / self.r
        self.base, self.blocks, self.rows, self.adapt = base, blocks, rows, tuple(sorted(adapt))
        for p in base.parameters():
            p.requires_grad_(False)  # W0 and b are frozen (Sec. 4.1)
        w = base.weight
        self.lora_A = nn.ParameterDict({str(i): nn.Parameter(
            torch.randn(r, base.in_features, device=w.device, dtype=w.dtype) / base.in_features ** 0.5)
            for i in self.adapt})  # each (r, in)
        self.lora_B = nn.ParameterDict({str(i): nn.Parameter(
            torch.zeros(rows, r, device=w.device, dtype=w.dtype)) for i in self.adapt})  # each (rows, r)
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        """The full update (alpha / r) Delta W, (out, in): (alpha / r) B_i A_i on adapted blocks, zero elsewhere."""
        parts = [self.scale * self.lora_B[str(i)] @ self.lora_A[str(i)] if i in self.adapt
                 else self.base.weight.new_zeros(self.rows, self.base.in_features) for i in range(self.blocks)]
        return torch.cat(parts, dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., out). Merged: the plain layer with W0 + (alpha / r) B A. Else W0 x + b plus the
        low-rank path (alpha / r) B_i (A_i x) on each adapted block: two thin products, never the d x k matrix."""
        check_tensor("x", x, floating=True, nonempty=False)
        if x.shape[-1] != self.base.in_features:
            raise ValueError(f"LoRALinear expects inputs (..., {self.base.in_features}), got {tuple(x.shape)}")
        y = self.base(x)  # (..., out)
        if self.merged:
            return y
        parts = list(y.split(self.rows, dim=-1))  # blocks x (..., rows)
        for i in self.adapt:
            parts[i] = parts[i] + self.scale * F.linear(F.linear(x, self.lora_A[str(i)]), self.lora_B[str(i)])
        return torch.cat(parts, dim=-1)

    @torch.no_grad()
    def merge(self) -> LoRALinear:
        """Fold the update into the frozen weight, W <- W0 + (alpha / r) B A: afterwards a plain matmul."""
        if self.merged:
            raise ValueError("LoRALinear.merge: the update is already merged into the weight (merging twice "
                             "would add it again); call unmerge() first")
        self.base.weight += self.delta_weight()
        self.merged = True
        return self

    @torch.no_grad()
    def unmerge(self) -> LoRALinear:
        """Take the update back out, W <- W - (alpha / r) B A, recovering W0 (up to rounding)."""
        if not self.merged:
            raise ValueError("LoRALinear.unmerge: the update is not merged; nothing to take out")
        self.base.weight -= self.delta_weight()
        self.merged = False
        return self

    def extra_repr(self) -> str:
        """Shown by ``print(module)``."""
        return f"r={self.r}, alpha={self.alpha:g}, blocks={self.blocks}, adapt={self.adapt}, merged={self.merged}"


def _attention_modules(model: nn.Module) -> list[nn.Module]:
    linear = (nn.Linear, LoRALinear)
    mods = [m for m in model.modules() if isinstance(getattr(m, "c_attn", None), linear)
            and isinstance(getattr(m, "c_proj", None), linear)]
    if not mods:
        raise ValueError(f"apply_lora expects a GPT-style model whose attention has a fused c_attn (C -> 3C) and "
                         f"a c_proj nn.Linear; {type(model).__name__} has none")
    return mods


def apply_lora(model: nn.Module, r: int, alpha: float, targets=("q", "v")) -> nn.Module:
    """Freeze every parameter of ``model`` and put LoRA adapters on the chosen attention projections, in place.

    ``targets`` is a subset of ``("q", "k", "v", "o")``: q, k, v are the blocks 0, 1, 2 of each layer's fused
    ``c_attn`` (one :class:`LoRALinear` adapting the chosen blocks), o is ``c_proj``. The default (q, v) is
    the paper's choice (Sec. 4.2, Table 5). Returns ``model``.
    """
    targets = tuple(targets) if not isinstance(targets, str) else (targets,)
    if not targets or len(set(targets)) != len(targets) or any(t not in TARGETS for t in targets):
        raise ValueError(f"targets must be distinct names from {TARGETS}, got {targets}")
    check_int("r (rank)", r, low=1)
    check_float("alpha", alpha, 0.0, low_open=True)
    mods = _attention_modules(model)
    if any(isinstance(m.c_attn, LoRALinear) or isinstance(m.c_proj, LoRALinear) for m in mods):
        raise ValueError("apply_lora: this model already has LoRA adapters")
    for p in model.parameters():
        p.requires_grad_(False)
    qkv = [i for i, t in enumerate("qkv") if t in targets]
    for m in mods:
        if qkv:
            m.c_attn = LoRALinear(m.c_attn, r, alpha, blocks=3, adapt=qkv)
        if "o" in targets:
            m.c_proj = LoRALinear(m.c_proj, r, alpha)
    return model


def lora_layers(model: nn.Module) -> list[LoRALinear]:
    """Every :class:`LoRALinear` inside ``model``."""
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def _require_lora(model: nn.Module, what: str) -> list[LoRALinear]:
    layers = lora_layers(model)
    if not layers:
        raise ValueError(f"{what}: the model has no LoRA adapters (call apply_lora first)")
    return layers


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every adapter of ``model`` into its weight (:meth:`LoRALinear.merge`)."""
    for m in _require_lora(model, "merge_lora"):
        m.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo :func:`merge_lora` (:meth:`LoRALinear.unmerge` on every adapter)."""
    for m in _require_lora(model, "unmerge_lora"):
        m.unmerge()
    return model


def count_trainable(model: nn.Module) -> int:
    """Number of parameters that require a gradient (a parameter shared by two modules counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def lora_state_dict(model: nn.Module) -> dict:
    """Only the adapters' A and B tensors of ``model`` (names as in ``model.state_dict()``): the whole
    adaptation, to be saved beside one shared copy of the pre-trained weights."""
    _require_lora(model, "lora_state_dict")
    return {k: v.detach().clone() for k, v in model.state_dict().items() if ".lora_A." in k or ".lora_B." in k}


def load_lora(model: nn.Module, state: dict, r: int, alpha: float, targets=("q", "v")) -> nn.Module:
    """Put adapters (``r``, ``alpha``, ``targets`` as in :func:`apply_lora`) on a fresh pre-trained ``model`` and
    load their A and B from ``state`` (a :func:`lora_state_dict`). Names or shapes that do not match raise
    ``ValueError``."""
    if not isinstance(state, dict) or not state:
        raise ValueError("load_lora expects a non-empty dict of adapter tensors from lora_state_dict")
    apply_lora(model, r, alpha, targets)
    own = {k: v for k, v in model.state_dict().items() if ".lora_A." in k or ".lora_B." in k}
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        raise ValueError(f"adapter state does not fit (r={r}, targets={targets}): missing {missing[:3]}, "
                         f"unexpected {extra[:3]}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ValueError(f"adapter {k} is {tuple(v.shape)} in the state, {tuple(own[k].shape)} here (r={r})")
    model.load_state_dict(state, strict=False)
    return model


def state_bytes(state) -> int:
    """Bytes held by the tensors of a (nested) dict or list, e.g. an optimiser's ``state_dict()["state"]``."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(v) for v in state)
    return 0


def bench_lora_step(device="cpu", r: int = 4, batch: int = 8, repeats: int = 10) -> dict:
    """One LoRA training step (r on W_q, W_v; AdamW on A and B) against one full fine-tuning step (AdamW on
    every weight) of the same GPT (``gpt.cpu_config()``: 4 x 96, context 128) on the same batch.

    Both are warmed up, then alternated (ABBA) and timed by their median (``common.bench.time_ab``). Returns
    ``{"name", "ours_ms" (LoRA), "theirs_ms" (full), "ratio", "lora_optim_bytes", "full_optim_bytes",
    "optim_bytes_ratio", "lora_trainable", "full_trainable"}``.
    """
    gpt = common.topic("gpt")
    cfg = gpt.cpu_config()
    torch.manual_seed(0)
    full = gpt.GPT(cfg).to(device)
    adapted = apply_lora(copy.deepcopy(full), r, alpha=float(r))
    x = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size + 1), device=device)
    x, y = x[:, :-1], x[:, 1:]

    def step_fn(model):
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def run():
            _, loss = model(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return run, opt

    (lora_step, lora_opt), (full_step, full_opt) = step_fn(adapted), step_fn(full)
    ours, theirs = common.bench.time_ab(lora_step, full_step, repeats)
    lb, fb = state_bytes(lora_opt.state_dict()["state"]), state_bytes(full_opt.state_dict()["state"])
    return {"name": f"[{device}] LoRA r={r} (q, v) step vs full fine-tuning, GPT {cfg.n_layer}x{cfg.n_embd}",
            "ours_ms": ours, "theirs_ms": theirs, "ratio": ours / theirs, "lora_optim_bytes": lb,
            "full_optim_bytes": fb, "optim_bytes_ratio": lb / fb, "lora_trainable": count_trainable(adapted),
            "full_trainable": count_trainable(full)}
