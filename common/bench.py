"""``make bench``: measured speed ratios against what a user would otherwise pick.

Each row runs both sides in one process on the same data, a warm-up first, and reports the
median of several repeats. Benchmarks print numbers; they assert nothing.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import TensorLoader, load_images, to_float
from .runtime import device, seed_everything
from .topics import topic


def _median_time(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_ab(fa, fb, repeats: int = 3) -> tuple[float, float]:
    """Median milliseconds of two callables ``fa`` and ``fb``, after one warm-up call each, alternated ABBA
    (A B, B A, A B, ...) so that drift in the machine's speed hits both alike; CUDA is synchronised per call."""
    if not (callable(fa) and callable(fb)):
        raise ValueError("time_ab expects two callables")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    fa(), fb()
    times: tuple[list, list] = ([], [])
    for i in range(repeats):
        for j in ((0, 1) if i % 2 == 0 else (1, 0)):
            t0 = time.perf_counter()
            (fa, fb)[j]()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[j].append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times[0]), 1000.0 * statistics.median(times[1])


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))


def bench_loader(n: int | None = None, batch_size: int = 128, repeats: int = 3) -> list[dict]:
    """One MLP epoch over MNIST, and its batching alone: :class:`TensorLoader` vs ``DataLoader``.

    Returns two rows on :func:`common.device` (CUDA when present): the batching alone (what the
    loader itself decides) and the whole epoch (model compute included; on a CPU the model's
    compute dominates and bounds this ratio, on a GPU the loader's share is larger).
    """
    seed_everything(0)
    dev = device()
    x, y = load_images("mnist", "train")
    if n is not None:
        x, y = x[:n], y[:n]
    xf = to_float(x)
    model = _mlp().to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def epoch(loader):
        for xb, yb in loader:
            xb, yb = xb.to(dev), yb.to(dev)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    ours = TensorLoader(xf, y, batch_size=batch_size, device=dev)
    theirs = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xf, y), batch_size=batch_size,
                                         shuffle=True)
    t_ours = _median_time(lambda: epoch(ours), repeats)
    t_theirs = _median_time(lambda: epoch(theirs), repeats)
    t_ours_only = _median_time(lambda: [b for b in ours], repeats)  # batching alone, no model
    t_theirs_only = _median_time(lambda: [b for b in theirs], repeats)
    where = dev.type
    return [{"name": f"[{where}] batching alone, MNIST ({len(x):,} images, batch {batch_size})",
             "ours": "TensorLoader", "ours_s": t_ours_only, "theirs": "DataLoader", "theirs_s": t_theirs_only,
             "speedup": t_theirs_only / t_ours_only},
            {"name": f"[{where}] whole MLP 784-256-10 epoch (model included)",
             "ours": "TensorLoader", "ours_s": t_ours, "theirs": "DataLoader", "theirs_s": t_theirs,
             "speedup": t_theirs / t_ours}]


def bench_fit(n: int = 60000, batch_size: int = 128, repeats: int = 10) -> dict:
    """``common.train.fit`` vs a bare hand-written loop on the same model and batches."""
    from .train import fit

    seed_everything(0)
    dev = device()
    x, y = load_images("mnist", "train")
    xf, y = to_float(x[:n]), y[:n]
    model = _mlp().to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loader = TensorLoader(xf, y, batch_size=batch_size, device=dev)

    def bare():
        model.train()
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def ours():
        fit(model, loader, optimizer=opt, epochs=1, progress_bar=False, amp=False)  # the loop alone: no autocast

    times: dict = {bare: [], ours: []}
    bare(), ours()  # warm-up
    for i in range(repeats):  # alternate the order (ABBA) so the machine's drift hits both sides alike
        for fn in ((bare, ours) if i % 2 == 0 else (ours, bare)):
            t0 = time.perf_counter()
            fn()
            times[fn].append(time.perf_counter() - t0)
    tb, tf = statistics.median(times[bare]), statistics.median(times[ours])
    return {"name": f"[{dev.type}] fit, one epoch, {n:,} MNIST images", "ours": "fit()", "ours_s": tf,
            "theirs": "bare loop", "theirs_s": tb, "overhead_pct": 100 * (tf / tb - 1)}


def time_optimizer_step(make_optimizer, shapes, device="cpu", repeats: int = 20, warmup: int = 3) -> float:
    """Median milliseconds of one ``optimizer.step()`` over parameters of the given ``shapes``.

    ``make_optimizer(params)`` builds the optimiser under test. Every call uses the same seeded random
    gradients (zero parameters, gradients from ``torch.Generator().manual_seed(0)``), so optimisers
    timed one after the other see identical work; ``warmup`` steps run first and are not counted.
    On CUDA the device is synchronised around each step.
    """
    from .checks import check_int

    check_int("repeats", repeats, low=1)
    check_int("warmup", warmup, low=0)
    dev = torch.device(device)
    shapes = [tuple(check_int("size", d, low=1) for d in s) for s in shapes]
    if not shapes:
        raise ValueError("shapes must name at least one parameter shape, got none")
    g = torch.Generator().manual_seed(0)
    params = [torch.zeros(s, device=dev, requires_grad=True) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).to(dev)
    opt = make_optimizer(params)
    times = []
    for i in range(repeats + warmup):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)


def time_forward_backward(ours, theirs, inputs, grad_out=None, device="cpu", repeats: int = 20,
                          warmup: int = 3, backward: bool = True) -> tuple[float, float]:
    """Median milliseconds of one forward+backward pass of ``ours`` and of ``theirs`` on the same inputs.

    With ``backward=False`` each pass is the forward alone, under ``torch.inference_mode`` (where
    PyTorch takes its inference fast paths, e.g. ``nn.TransformerEncoderLayer``'s fused kernel).

    ``ours(*inputs)`` and ``theirs(*inputs)`` each return one tensor. Every pass takes fresh copies of the
    floating-point ``inputs`` (a tensor or a tuple of tensors) that require grad, so the backward reaches
    the inputs as it would inside a network, and backpropagates ``grad_out`` (default: ones shaped like
    the output). The two sides alternate in ABBA order, so the machine's drift hits both alike;
    ``warmup`` rounds run first and are not counted. On CUDA the device is synchronised around each pass.
    Returns ``(ours_ms, theirs_ms)``.
    """
    from .checks import check_int

    check_int("repeats", repeats, low=1)
    check_int("warmup", warmup, low=0)
    dev = torch.device(device)
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise ValueError(f"inputs must be a tensor or a tuple of tensors, got {type(inputs).__name__}")
    inputs = tuple(t.detach().to(dev) for t in inputs)

    def one_pass(fn) -> float:
        xs = [t.clone().requires_grad_() if t.is_floating_point() and backward else t for t in inputs]
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        if backward:
            out = fn(*xs)
            out.backward(torch.ones_like(out) if grad_out is None else grad_out)
        else:
            with torch.inference_mode():
                fn(*xs)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - t0

    times: dict = {"ours": [], "theirs": []}
    for i in range(warmup + repeats):
        order = (("ours", ours), ("theirs", theirs)) if i % 2 == 0 else (("theirs", theirs), ("ours", ours))
        for key, fn in order:
            t = one_pass(fn)
            if i >= warmup:
                times[key].append(t)
    return 1000.0 * statistics.median(times["ours"]), 1000.0 * statistics.median(times["theirs"])


# Topic benchmarks: (module, function, our label, baseline label[, our key, baseline key][, {keyword
# arguments}]). Each function takes ``device`` (and the keyword arguments, when given) and returns a dict with both times in milliseconds (keys default to "ours_ms" and
# "theirs_ms"), "ratio" (ours / theirs) and optionally "name".
_TOPIC_BENCHES = [
    ("cnn", "bench_conv", "unfold conv (cnn.py)", "F.conv2d", "unfold_ms", "conv2d_ms"),
    ("weight_decay", "bench_step", "Adam(decoupled) (weight_decay.py)", "AdamW foreach", "ours_ms", "adamw_ms"),
    ("resnet", "bench_block", "BasicBlock (resnet.py)", "torchvision BasicBlock", "ours_ms", "torchvision_ms"),
    ("dropout", "bench_dropout", "dropout (dropout.py)", "F.dropout"),
    ("batchnorm", "bench_batchnorm", "BatchNorm (batchnorm.py)", "nn.BatchNorm2d"),
    ("layernorm", "bench_layernorm", "LayerNorm (layernorm.py)", "nn.LayerNorm"),
    ("gelu", "bench_gelu", "gelu (gelu.py)", "F.gelu"),
    ("adam", "bench_adam_step", "Adam (adam.py)", "torch.optim.Adam"),
    ("rnn", "bench_rnn", "ElmanRNN loop (rnn.py)", "nn.RNN"),
    ("lstm", "bench_lstm", "LSTM loop (lstm.py)", "nn.LSTM"),
    ("forget_gate", "bench_cell", "ExtendedLSTM (forget_gate.py)", "nn.LSTM"),
    ("word2vec", "bench_sgns_step", "SGNS step, hand-written (word2vec.py)", "autograd + sparse Embedding"),
    ("seq2seq", "bench_beam", "batched beam search (seq2seq.py)", "per-sentence beam loop"),
    ("attention", "bench_attention", "additive attention (attention.py)", "F.scaled_dot_product_attention"),
    ("moe", "bench_moe", "sparse MoE, 8 experts (moe.py)", "dense reference", {"num_experts": 8}),
    ("moe", "bench_moe", "sparse MoE, 32 experts (moe.py)", "dense reference", {"num_experts": 32}),
    ("transformer", "bench_mha", "multi-head attention (transformer.py)", "nn.MultiheadAttention"),
    ("gpt", "bench_train_step", "GPT step (train.py)", "plain training loop"),
    ("gpt", "bench_vs_torch", "GPT (gpt.py)", "nn.TransformerEncoder, causal"),
    ("gpt", "bench_generate", "KV-cache generation (gpt.py)", "uncached generation"),
    ("gpt", "bench_mfu", "GPT step (gpt.py)", "the same FLOPs at matmul peak"),
    ("lora", "bench_lora_step", "LoRA r=4 step (lora.py)", "full fine-tuning step"),
    ("rlhf", "bench_rollout", "PPO rollout, KV cache (rlhf.py)", "uncached rollout"),
    ("bert", "bench_encoder_layer", "BERT encoder layer (bert.py)", "nn.TransformerEncoderLayer"),
    ("bert", "bench_encoder_layer", "BERT encoder layer (bert.py)", "nn.TransformerEncoderLayer, fast path",
     {"inference": True}),
    ("t5", "bench_encoder_layer", "T5 encoder block (t5.py)", "nn.TransformerEncoderLayer, pre-norm"),
    ("t5", "bench_encoder_layer", "T5 encoder block (t5.py)", "nn.TransformerEncoderLayer, fast path",
     {"inference": True}),
    ("vit", "bench_encoder_layer", "ViT encoder block (vit.py)", "nn.TransformerEncoderLayer, pre-norm"),
    ("vit", "bench_encoder_layer", "ViT encoder block (vit.py)", "nn.TransformerEncoderLayer, fast path",
     {"inference": True}),
    ("diffusion", "bench_sampling", "DDIM, 50 steps (diffusion.py)", "DDPM, 1000 steps"),
    ("diffusion", "bench_compile", "U-Net fwd+bwd, eager (diffusion.py)", "the same under torch.compile"),
    ("dalle", "bench_generate", "DALL-E KV-cache generation (dalle.py)", "uncached generation"),
]


def _topic_row(result: dict, module: str, fn: str, ours: str, theirs: str, ours_key: str = "ours_ms",
               theirs_key: str = "theirs_ms") -> dict:
    """A topic benchmark's result dict as a table row (times in seconds). Its memory (``*_bytes``) and
    throughput (``*_per_s``) entries, if any, become the row's ``extra`` line."""
    extra = ", ".join(f"{k} {v:,.0f}" for k, v in result.items() if k.endswith(("_bytes", "_per_s")))
    return {"name": result.get("name", f"{module}.{fn}"), "ours": ours, "ours_s": result[ours_key] / 1000,
            "theirs": theirs, "theirs_s": result[theirs_key] / 1000, "ratio": result["ratio"], "extra": extra}


def run_all() -> list[dict]:
    """Run every benchmark (topic rows too, when their modules exist) and print a table."""
    rows = [*bench_loader(), bench_fit()]
    for module, fn, *labels in _TOPIC_BENCHES:
        kwargs = labels.pop() if isinstance(labels[-1], dict) else {}
        try:
            mod = topic(module)
        except ValueError:  # planned, not built yet
            continue
        if hasattr(mod, fn):
            rows.append(_topic_row(getattr(mod, fn)(device=str(device()), **kwargs), module, fn, *labels))
    print(f"\n{'benchmark':48s} {'ours':>22s} {'baseline':>22s}  result")
    for r in rows:
        if "speedup" in r:
            result = f"{r['speedup']:.1f}x faster"
        elif "overhead_pct" in r:
            result = f"{r['overhead_pct']:+.1f}% overhead"
        else:
            ratio = r["ratio"]  # two significant digits below 1 (0.041, not 0.0)
            result = f"{ratio:{'.1f' if ratio >= 1 else '.2g'}}x the time of {r['theirs']}"
        ours = f"{r['ours']} {r['ours_s'] * 1e3:.0f} ms"
        theirs = f"{r['theirs']} {r['theirs_s'] * 1e3:.0f} ms"
        print(f"{r['name'][:48]:48s} {ours:>22s} {theirs:>22s}  {result}")
        if r.get("extra"):
            print(f"{'':4s}{r['extra']}")
    return rows
