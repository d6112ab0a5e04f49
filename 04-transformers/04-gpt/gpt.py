"""GPT: a decoder-only pre-norm Transformer language model (Radford et al. 2019, GPT-2; Brown et al. 2020, GPT-3).

The model is the one of GPT-2's Sec. 2.3: the Transformer decoder of GPT-1 with layer normalisation moved to
the input of each sub-block, one more layer norm after the last block, learned position embeddings, the
output layer tied to the token embedding, and residual projections initialised with a scale of
1/sqrt(N), N = 2 * n_layer residual layers. It models text by eq. (1), p(x) = prod_i p(s_i | s_1..s_{i-1}).

Attention uses ``F.scaled_dot_product_attention``; :func:`causal_attention` is the explicit
softmax(QK^T / sqrt(d)) V with a causal mask that it is tested against. :meth:`GPT.generate` samples with
temperature and top-k (GPT-2 Sec. 3.6 uses top-k with k = 2) through a key/value cache. The trainer is
``train.py`` beside this file; :func:`load_or_train` gives later topics the trained checkpoint.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import common
import common.bench
from common.checks import check_float, check_int, check_tensor

HERE = Path(__file__).resolve().parent


@dataclass
class GPTConfig:
    """Model shape: vocabulary, context (``block_size``), depth, heads, width, dropout, biases."""

    vocab_size: int = 65
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            check_int(name, getattr(self, name), low=1)
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd must be divisible by n_head, got n_embd={self.n_embd}, n_head={self.n_head}")
        self.dropout = float(check_float("dropout", self.dropout, 0.0, 1.0, high_open=True))
        if not isinstance(self.bias, bool):
            raise ValueError(f"bias must be a bool, got {self.bias!r}")

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        """Build from a dict; an unknown key raises ``ValueError`` naming the valid ones."""
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ValueError(f"unknown GPTConfig key(s) {unknown}; valid keys are {valid}")
        return cls(**d)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Explicit scaled dot-product attention with a causal mask (Vaswani et al. 2017, eq. 1).

    ``q`` is (B, H, Tq, D), ``k`` and ``v`` (B, H, Tk, D) with Tk >= Tq; query i sits at position
    Tk - Tq + i and sees keys 0..Tk - Tq + i. Returns softmax(QK^T / sqrt(D) + mask) V, (B, H, Tq, D).
    """
    tq, tk = q.shape[-2], k.shape[-2]
    if tk < tq:
        raise ValueError(f"causal_attention needs at least as many keys as queries, got {tk} keys, {tq} queries")
    att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, Tq, Tk)
    mask = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(diagonal=tk - tq)
    att = att.masked_fill(~mask, float("-inf"))
    return F.softmax(att, dim=-1) @ v


class KVCache:
    """Keys and values of every layer for the tokens seen so far, in preallocated (B, H, T_max, D) buffers."""

    def __init__(self, cfg: GPTConfig, batch: int, device, dtype):
        shape = (batch, cfg.n_head, cfg.block_size, cfg.n_embd // cfg.n_head)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.length = 0  # positions filled

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's (B, H, T, D) keys and values of ``layer``; return all of them so far."""
        t0, t1 = self.length, self.length + k.shape[2]
        self.k[layer][:, :, t0:t1], self.v[layer][:, :, t0:t1] = k, v
        return self.k[layer][:, :, :t1], self.v[layer][:, :, :t1]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: one (C -> 3C) projection for Q, K, V and one output projection."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)  # a residual projection
        self.dropout = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)
        self.explicit = False  # True: use causal_attention instead of SDPA (for the check)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """(B, T, C) -> (B, T, C); with ``cache`` the keys/values of earlier positions come from it."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        past = 0 if cache is None else cache.length
        if cache is not None:
            k, v = cache.append(layer, k, v)  # (B, H, past + T, D)
        if self.explicit:
            y = causal_attention(q, k, v)
        elif past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                               dropout_p=self.dropout if self.training else 0.0)
        else:  # new queries at positions past..past+T-1 see every cached key and the causal part of their own
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_drop(self.c_proj(y))


class Block(nn.Module):
    """Pre-norm Transformer block (GPT-2 Sec. 2.3): x + attn(ln(x)), then x + mlp(ln(x)); MLP 4x wide, GELU."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias), nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.mlp = nn.Sequential()
        self.mlp.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.mlp.gelu = nn.GELU()
        self.mlp.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)  # a residual projection
        self.mlp.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """(B, T, C) -> (B, T, C)."""
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """The GPT language model: token + learned position embeddings, ``n_layer`` pre-norm blocks, a final
    layer norm and an output layer that shares the token embedding's weights. ``GPT(cfg)`` or ``GPT(**keys)``."""

    def __init__(self, cfg: GPTConfig | None = None, **kwargs):
        super().__init__()
        cfg = cfg if cfg is not None else GPTConfig.from_dict(kwargs)
        if not isinstance(cfg, GPTConfig):
            raise ValueError(f"GPT expects a GPTConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied embeddings
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: residual layers scaled by 1/sqrt(N), N = 2 n_layer
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; ``non_embedding`` leaves out the token and position embeddings (Kaplan et al.'s N)."""
        n = sum(p.numel() for p in self.parameters())  # the tied head is counted once
        return n - self.wte.weight.numel() - self.wpe.weight.numel() if non_embedding else n

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token ids (B, T) -> logits (B, T, V), and the mean cross-entropy when ``targets`` (B, T) is given."""
        check_tensor("idx", idx, dim=2, integer=True)
        B, T = idx.shape
        past = 0 if cache is None else cache.length
        if past + T > self.cfg.block_size:
            raise ValueError(f"sequence of {past + T} tokens is longer than the context block_size="
                             f"{self.cfg.block_size}")
        pos = torch.arange(past, past + T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for i, block in enumerate(self.h):
            x = block(x, cache, i)
        if cache is not None:
            cache.length += T
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        if targets is None:
            return logits, None
        if targets.shape != idx.shape:
            raise ValueError(f"targets must have the shape of idx {tuple(idx.shape)}, got {tuple(targets.shape)}")
        return logits, F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())

    def set_explicit_attention(self, on: bool = True) -> GPT:
        """Switch every layer between SDPA (default) and the explicit :func:`causal_attention`."""
        for block in self.h:
            block.attn.explicit = bool(on)
        return self

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 use_cache: bool = True, generator: torch.Generator | None = None,
                 return_logits: bool = False):
        """Sample ``max_new_tokens`` tokens after the prompt ``idx`` (B, T); returns (B, T + new) ids
        (and the (B, new, V) logits each step sampled from, with ``return_logits``).

        Logits are divided by ``temperature`` and cut to the ``top_k`` largest. With ``use_cache`` each step
        feeds only the newest token and reuses cached keys/values; once the context is full the cache is
        rebuilt from the last ``block_size`` tokens, which is what the uncached path sees, so both give the
        same logits.
        """
        check_tensor("idx", idx, dim=2, integer=True)
        check_int("max_new_tokens", max_new_tokens, low=0)
        temperature = check_float("temperature", temperature, 0.0, low_open=True)
        if top_k is not None:
            check_int("top_k", top_k, low=1, high=self.cfg.vocab_size)
        bs, cache, out = self.cfg.block_size, None, []
        for _ in range(max_new_tokens):
            if not use_cache:
                logits, _ = self(idx[:, -bs:])
            elif cache is None or cache.length >= bs:  # (re)fill from the last block_size tokens
                cache = KVCache(self.cfg, idx.shape[0], idx.device, self.wte.weight.dtype)
                logits, _ = self(idx[:, -bs:], cache=cache)
            else:
                logits, _ = self(idx[:, -1:], cache=cache)
            logits = logits[:, -1, :] / temperature  # (B, V)
            if return_logits:
                out.append(logits)
            if top_k is not None:
                kth = torch.topk(logits, top_k).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(F.softmax(logits.float(), dim=-1), 1, generator=generator)  # (B, 1)
            idx = torch.cat([idx, nxt], dim=1)
        return (idx, torch.stack(out, dim=1)) if return_logits else idx


def load_state(model: GPT, state: dict) -> GPT:
    """Load a state dict into ``model``; a checkpoint of another shape raises ``ValueError`` naming both."""
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        raise ValueError(f"checkpoint does not fit this model: missing {missing[:4]}, unexpected {extra[:4]}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ValueError(f"checkpoint was saved from another model shape: {k} is {tuple(v.shape)} there, "
                             f"this model ({model.cfg}) expects {tuple(own[k].shape)}")
    model.load_state_dict(state)
    return model


def load_checkpoint(path, cfg: GPTConfig | None = None, device="cpu") -> tuple[GPT, dict]:
    """Load a ``train.py`` checkpoint (``weights_only=True``); returns ``(model, checkpoint dict)``.

    With ``cfg`` the weights are loaded into a model of that shape (``ValueError`` if they do not fit).
    """
    ckpt = torch.load(path, map_location=device, weights_only=True)
    model = GPT(cfg if cfg is not None else GPTConfig.from_dict(ckpt["model_config"])).to(device)
    return load_state(model, ckpt["model"]), ckpt


def _trainer():
    """``train.py`` beside this file, imported under the name ``gpt_train`` (``train`` is too common a name)."""
    import importlib.util
    import sys

    if "gpt_train" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpt_train", HERE / "train.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["gpt_train"] = module
    return sys.modules["gpt_train"]


def cpu_config(vocab_size: int = 65, **overrides) -> GPTConfig:
    """The model shape of ``train.py``'s cpu preset (the benchmarks' default), with ``overrides``."""
    c = _trainer().preset("cpu")
    return GPTConfig(vocab_size=vocab_size, **{**{k: c[k] for k in ("n_layer", "n_head", "n_embd", "block_size",
                                                                       "dropout", "bias")}, **overrides})


def load_or_train(preset: str = "cpu", path=None, device="cpu", **overrides) -> tuple[GPT, dict]:
    """The trained GPT of ``train.py --preset <preset>``: loaded from ``checkpoints/`` when present, else
    trained there by the same code path (``train.run``); on the smoke scale's stand-in text the file is
    ``gpt-<preset>-synthetic.pt``. Returns ``(model, checkpoint dict)``; the dict's
    ``"vocab"`` is the character list for ``common.text.CharTokenizer``-style decoding."""
    trainer = _trainer()
    cfg = trainer.preset(preset, **overrides)
    synthetic = cfg["synthetic"] if cfg["synthetic"] is not None else common.scale() == "smoke"
    name = f"gpt-{preset}{'-synthetic' if synthetic else ''}.pt"  # a smoke-scale stand-in never takes the real name
    path = Path(path) if path is not None else HERE / "checkpoints" / name
    if not path.exists():
        trainer.run({**cfg, "out": str(path), "device": str(device)})
    return load_checkpoint(path, device=device)


# ----------------------------------------------------------------------------- benchmarks


def train_flops_per_token(cfg: GPTConfig) -> float:
    """Training FLOPs per token, 3 x forward (Kaplan et al. 2020, Table 1): 6N + 6 n_layer T C, with N
    the non-embedding matmul weights plus the output layer."""
    n = 12 * cfg.n_layer * cfg.n_embd ** 2 + cfg.vocab_size * cfg.n_embd
    return 6.0 * n + 6.0 * cfg.n_layer * cfg.block_size * cfg.n_embd


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)


def _bench_setup(device, cfg, batch):
    torch.manual_seed(0)
    model = GPT(cfg).to(device)
    x = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size + 1), device=device)
    return model, x[:, :-1], x[:, 1:]


def bench_train_step(device="cpu", cfg: GPTConfig | None = None, batch: int = 8, repeats: int = 10) -> dict:
    """Training tokens/s of ``train.py``'s step (AdamW, clipping, lr schedule) against a plain loop
    (forward, loss, backward, AdamW step) over the same model and batch."""
    trainer = _trainer()
    cfg = cfg or cpu_config()
    model, x, y = _bench_setup(device, cfg, batch)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tc = trainer.preset("cpu", batch_size=batch)

    def plain():
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    ours, theirs = common.bench.time_ab(lambda: trainer.train_step(model, opt, [(x, y)], 10, tc, None), plain, repeats)
    tok = batch * cfg.block_size
    return {"name": f"[{device}] GPT train step, {cfg.n_layer}x{cfg.n_embd}, {tok} tokens", "ours_ms": ours,
            "theirs_ms": theirs, "ratio": ours / theirs, "ours_tokens_per_s": tok / ours * 1e3,
            "theirs_tokens_per_s": tok / theirs * 1e3}


def bench_vs_torch(device="cpu", cfg: GPTConfig | None = None, batch: int = 8, repeats: int = 10) -> dict:
    """Training step of our GPT against the same sizes built from ``nn.TransformerEncoderLayer`` (pre-norm,
    GELU, causal mask): the decoder-only stack; ``nn.TransformerDecoderLayer`` would add a cross-attention."""
    cfg = cfg or cpu_config()
    model, x, y = _bench_setup(device, cfg, batch)
    layer = nn.TransformerEncoderLayer(cfg.n_embd, cfg.n_head, 4 * cfg.n_embd, 0.0, "gelu", batch_first=True,
                                       norm_first=True)
    ref = nn.ModuleDict({"wte": nn.Embedding(cfg.vocab_size, cfg.n_embd), "wpe": nn.Embedding(cfg.block_size,
                         cfg.n_embd), "enc": nn.TransformerEncoder(layer, cfg.n_layer, enable_nested_tensor=False),
                         "ln": nn.LayerNorm(cfg.n_embd)}).to(device)
    mask = nn.Transformer.generate_square_subsequent_mask(cfg.block_size, device=device)
    pos = torch.arange(cfg.block_size, device=device)

    def ref_loss():
        h = ref["enc"](ref["wte"](x) + ref["wpe"](pos), mask=mask, is_causal=True)
        return F.cross_entropy((ref["ln"](h) @ ref["wte"].weight.T).flatten(0, 1), y.flatten())

    def step(params, loss_fn):
        opt = torch.optim.AdamW(params, lr=1e-3)

        def run():
            loss = loss_fn()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return run

    ours, theirs = common.bench.time_ab(step(model.parameters(), lambda: model(x, y)[1]), step(ref.parameters(), ref_loss), repeats)
    tok = batch * cfg.block_size
    return {"name": f"[{device}] GPT vs nn.TransformerEncoder stack, {cfg.n_layer}x{cfg.n_embd}", "ours_ms": ours,
            "theirs_ms": theirs, "ratio": ours / theirs, "ours_tokens_per_s": tok / ours * 1e3,
            "theirs_tokens_per_s": tok / theirs * 1e3}


def bench_generate(device="cpu", cfg: GPTConfig | None = None, new_tokens: int = 256, batch: int = 1,
                   repeats: int = 3) -> dict:
    """KV-cache generation against uncached generation (each step re-runs the whole context), greedy-free
    sampling of ``new_tokens`` tokens after a one-token prompt; context ``new_tokens + 1``."""
    cfg = cfg or cpu_config(block_size=new_tokens + 1)
    torch.manual_seed(0)
    model = GPT(cfg).to(device).eval()
    idx = torch.zeros(batch, 1, dtype=torch.long, device=device)
    ours, theirs = common.bench.time_ab(lambda: model.generate(idx, new_tokens, top_k=10, use_cache=True),
                          lambda: model.generate(idx, new_tokens, top_k=10, use_cache=False), repeats)
    return {"name": f"[{device}] generate {new_tokens} tokens, KV cache vs none", "ours_ms": ours, "theirs_ms": theirs,
            "ratio": ours / theirs, "ours_tokens_per_s": batch * new_tokens / ours * 1e3,
            "theirs_tokens_per_s": batch * new_tokens / theirs * 1e3}


def matmul_peak_flops(device="cpu", n: int = 1024, repeats: int = 5) -> float:
    """The machine's measured float32 matmul throughput (FLOP/s) on ``n x n`` matrices: the MFU denominator."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    return 2 * n ** 3 / (_median_ms(lambda: a @ b, repeats) / 1000)


def bench_mfu(device="cpu", cfg: GPTConfig | None = None, batch: int = 8, repeats: int = 5) -> dict:
    """MFU-style utilisation of our training step: achieved FLOP/s (:func:`train_flops_per_token` x
    tokens/s) over :func:`matmul_peak_flops`. ``theirs_ms`` is the time the same FLOPs take at that peak."""
    cfg = cfg or cpu_config()
    model, x, y = _bench_setup(device, cfg, batch)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step():
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    ours = _median_ms(step, repeats)
    flops = train_flops_per_token(cfg) * batch * cfg.block_size
    peak = matmul_peak_flops(device)
    return {"name": f"[{device}] GPT {cfg.n_layer}x{cfg.n_embd} step vs matmul peak", "ours_ms": ours,
            "theirs_ms": flops / peak * 1000, "ratio": ours / (flops / peak * 1000),
            "tokens_per_s": batch * cfg.block_size / ours * 1e3, "achieved_flops": flops / ours * 1e3,
            "peak_flops": peak, "mfu": flops / ours * 1e3 / peak}

