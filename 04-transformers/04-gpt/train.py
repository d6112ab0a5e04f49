"""Headless GPT trainer: ``python train.py [--preset cpu] [--config file.json|toml] [--key value ...]`` or
``torchrun --nproc_per_node=N train.py ...`` (DDP: NCCL on GPUs, gloo on CPUs).

Character-level Tiny Shakespeare (``common.data.load_text`` + ``common.text.CharTokenizer``), split in order
into 90% train, 5% validation, 5% test. The token ids live in one tensor on the device; a batch is one
index operation on it. The batch of step s is drawn from a generator seeded with (seed, s), so the data
position is the step: a resumed run draws exactly what the uninterrupted one would have, and under DDP rank r
takes slice r of the same global batch, so N processes compute the gradient of the same global batch as one.

Config: defaults < ``--preset`` < ``--config`` file < command-line flags. ``run(cfg)`` is the same path
as a Python function (the notes notebook and the tests call it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

import common

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpt import GPT, GPTConfig, load_state  # noqa: E402

MODEL_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "dropout", "bias")
DEFAULTS = dict(
    dataset="tinyshakespeare", synthetic=None,  # synthetic: None = the smoke scale's stand-in text at smoke scale
    n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0, bias=True,
    batch_size=64, grad_accum=1, max_steps=2000, lr=1e-3, min_lr=1e-4, warmup_steps=100, decay_steps=None,
    weight_decay=0.1, beta1=0.9, beta2=0.99, grad_clip=1.0,
    eval_every=250, eval_tokens=None, eval_batch=64, test=False,
    seed=0, device="auto", dtype="auto", compile=False, threads=None,
    out=None, resume=False, save_every=None, progress=True, verbose=True,
)
PRESETS = {
    # the well-known small CPU recipe: 4 x 128, context 64, batch 12, 2,000 steps (lr decayed over them)
    "reference": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, max_steps=2000, lr=1e-3,
                      min_lr=1e-4, warmup_steps=100, bias=False, eval_every=500),
    "smoke": dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=16, max_steps=60, lr=3e-3,
                  warmup_steps=10, eval_every=30),
    # ours for 2 CPU cores and 3 minutes: narrower (4 x 96), longer context, higher peak lr, decay fitted to the budget
    "cpu": dict(n_layer=4, n_head=4, n_embd=96, block_size=128, batch_size=8, max_steps=3000, lr=3e-3,
                min_lr=3e-4, warmup_steps=100, eval_every=500),
    "gpu": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64, max_steps=5000, lr=1e-3,
                min_lr=1e-4, warmup_steps=100, dropout=0.2, eval_every=250),
}


def preset(name: str = "cpu", **overrides) -> dict:
    """The full config of preset ``name`` (``reference``, ``smoke``, ``cpu``, ``gpu``) with ``overrides``."""
    common.checks.check_choice("preset", name, tuple(PRESETS))
    return _merge(DEFAULTS, PRESETS[name], overrides)


def _merge(*dicts: dict) -> dict:
    out = {}
    for d in dicts:
        unknown = sorted(set(d) - set(DEFAULTS))
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; valid keys are {sorted(DEFAULTS)}")
        out.update(d)
    return out


def load_config_file(path) -> dict:
    """A config file: JSON (``.json``) or TOML (``.toml``), flat ``key = value``; unknown keys raise ``ValueError``."""
    path = Path(path)
    if path.suffix == ".toml":
        import tomllib

        d = tomllib.loads(path.read_text())
    elif path.suffix == ".json":
        d = json.loads(path.read_text())
    else:
        raise ValueError(f"config file must end in .json or .toml, got {path.name}")
    return _merge(d)


def lr_at(step: int, cfg: dict) -> float:
    """Learning rate at ``step`` (1-based): linear warm-up, then cosine decay to ``min_lr`` at ``decay_steps``."""
    if step <= cfg["warmup_steps"]:
        return cfg["lr"] * step / max(1, cfg["warmup_steps"])
    decay = cfg["decay_steps"] or cfg["max_steps"]
    frac = min(1.0, (step - cfg["warmup_steps"]) / max(1, decay - cfg["warmup_steps"]))
    return cfg["min_lr"] + 0.5 * (1 + math.cos(math.pi * frac)) * (cfg["lr"] - cfg["min_lr"])


def load_data(cfg: dict, device="cpu") -> tuple[dict, common.text.CharTokenizer]:
    """Token ids of the train / val / test splits (contiguous 90 / 5 / 5 %) on ``device``, and the tokenizer."""
    text = common.data.load_text(cfg["dataset"], synthetic=cfg["synthetic"])
    tok = common.text.CharTokenizer(text)
    ids = tok.encode(text).to(device)
    n_tr, n_va = int(0.90 * len(ids)), int(0.05 * len(ids))
    return {"train": ids[:n_tr], "val": ids[n_tr:n_tr + n_va], "test": ids[n_tr + n_va:]}, tok


def get_batch(data: torch.Tensor, step: int, cfg: dict, rank: int = 0, world: int = 1) -> list:
    """This rank's micro-batches of step ``step``: ``grad_accum`` pairs of (x, y), each (b, block_size).

    The global batch's offsets come from a generator seeded with (seed, step); rank r takes slice r.
    """
    B, T, acc = cfg["batch_size"], cfg["block_size"], cfg["grad_accum"]
    g = torch.Generator().manual_seed(cfg["seed"] * 1_000_003 + step)
    offsets = torch.randint(0, len(data) - T - 1, (B,), generator=g).to(data.device)
    per = B // world
    offsets = offsets[rank * per:(rank + 1) * per]
    win = data[offsets[:, None] + torch.arange(T + 1, device=data.device)]  # (per, T + 1): one gather
    return [(w[:, :-1], w[:, 1:]) for w in win.chunk(acc)]


@torch.no_grad()
def evaluate(model, data: torch.Tensor, cfg: dict) -> float:
    """Mean next-token cross-entropy (nats) over consecutive non-overlapping ``block_size`` windows of
    ``data`` (at most ``eval_tokens`` tokens), every position counted."""
    T = cfg["block_size"]
    n = (len(data) - 1) // T if cfg["eval_tokens"] is None else min((len(data) - 1) // T, cfg["eval_tokens"] // T)
    x = data[:n * T].view(n, T)
    y = data[1:n * T + 1].view(n, T)
    was = model.training
    model.eval()
    total = 0.0
    for i in range(0, n, cfg["eval_batch"]):
        with _autocast(cfg, data.device):
            logits, _ = model(x[i:i + cfg["eval_batch"]])
        total += F.cross_entropy(logits.flatten(0, 1).float(), y[i:i + cfg["eval_batch"]].flatten(),
                                 reduction="sum").item()
    model.train(was)
    return total / (n * T)


def _autocast(cfg: dict, device: torch.device):
    if device.type == "cuda" and cfg["dtype"] in ("auto", "bfloat16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(model, optimizer, batches: list, step: int, cfg: dict, device=None) -> torch.Tensor:
    """One optimiser step over ``batches`` (gradient accumulation; DDP syncs on the last micro-batch only):
    set the learning rate, backpropagate each micro-batch's loss / len(batches), clip, step. Returns the
    mean loss as a tensor (no host sync)."""
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step, cfg)
    device = device or batches[0][0].device
    total = torch.zeros((), device=device)
    for i, (x, y) in enumerate(batches):
        sync = i == len(batches) - 1 or not hasattr(model, "no_sync")
        with contextlib.nullcontext() if sync else model.no_sync():
            with _autocast(cfg, device):
                _, loss = model(x, y)
            (loss / len(batches)).backward()
        total += loss.detach()
    if cfg["grad_clip"]:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total / len(batches)


def _save(path: Path, **state) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    torch.save(state, tmp)
    os.replace(tmp, path)


def run(cfg: dict | None = None, **overrides) -> dict:
    """Train a GPT with the config ``cfg`` (merged over the defaults) and return the run:
    ``model`` (unwrapped, on its device), ``tokenizer``, ``history`` (step, seconds, train / val loss at each
    eval), ``val_loss``, ``test_loss`` (only with ``test=True``), ``seconds``, ``tokens_per_s``, ``config``.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) it joins the process group and wraps the model in DDP.
    """
    cfg = _merge(DEFAULTS, cfg or {}, overrides)
    if cfg["synthetic"] is None:  # recorded in the checkpoint: was this the real text or the smoke stand-in?
        cfg["synthetic"] = common.scale() == "smoke"
    for key in ("batch_size", "grad_accum", "max_steps", "eval_every", "eval_batch"):
        common.checks.check_int(key, cfg[key], low=1)
    common.checks.check_choice("dtype", cfg["dtype"], ("auto", "float32", "float64", "bfloat16"))
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if cfg["batch_size"] % (world * cfg["grad_accum"]):
        raise ValueError(f"batch_size={cfg['batch_size']} must be divisible by world_size x grad_accum = "
                         f"{world} x {cfg['grad_accum']} = {world * cfg['grad_accum']}")
    if cfg["device"] == "auto":
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available()
                              else "cpu")
    else:
        device = torch.device(cfg["device"])
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    threads = common.set_threads(cfg["threads"]) if cfg["threads"] else None  # the previous count, restored at the end
    try:
        return _run(cfg, world, rank, device)
    finally:
        if threads is not None:
            torch.set_num_threads(threads)


def _run(cfg: dict, world: int, rank: int, device: torch.device) -> dict:
    data, tok = load_data(cfg, device)
    mcfg = GPTConfig(vocab_size=tok.vocab_size, **{k: cfg[k] for k in MODEL_KEYS})
    torch.manual_seed(cfg["seed"])
    model = GPT(mcfg).to(device)
    if cfg["dtype"] == "float64":
        model.double()
    decay = [p for p in model.parameters() if p.dim() >= 2]  # matrices and embeddings; not biases, norms
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg["weight_decay"]},
                             {"params": rest, "weight_decay": 0.0}], lr=cfg["lr"],
                            betas=(cfg["beta1"], cfg["beta2"]), fused=device.type == "cuda")
    out = Path(cfg["out"]) if cfg["out"] else None
    step, history = 0, {"step": [], "seconds": [], "train": [], "val": [], "lr": []}
    if cfg["resume"] and out is not None and out.exists():
        ckpt = torch.load(out, map_location=device, weights_only=True)
        load_state(model, ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        step, history = ckpt["step"], ckpt["history"]
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
    if cfg["compile"]:
        net = torch.compile(net)
    main = rank == 0
    say = print if main and cfg["verbose"] else (lambda *a, **k: None)
    say(f"GPT {mcfg.n_layer}x{mcfg.n_embd}, {model.num_params():,} non-embedding parameters | world {world} | "
        f"batch {cfg['batch_size']} x {cfg['block_size']} tokens | {device}")

    def checkpoint():
        if out is not None and main:
            _save(out, model=model.state_dict(), optimizer=opt.state_dict(), step=step, history=history,
                  model_config=asdict(mcfg), train_config=cfg, vocab=tok.chars)

    t0 = time.perf_counter() - (history["seconds"][-1] if history["seconds"] else 0.0)
    run_loss, n_loss = torch.zeros((), device=device), 0
    bar = common.progress(total=cfg["max_steps"], initial=step, desc="train", disable=not (main and cfg["progress"]))
    while step < cfg["max_steps"]:
        step += 1
        if cfg["dropout"] > 0:  # dropout's randomness is a function of (seed, rank, step): exact resume
            torch.manual_seed((cfg["seed"] * 1_000_003 + step) * 64 + rank)
        loss = train_step(net, opt, get_batch(data["train"], step, cfg, rank, world), step, cfg, device)
        run_loss += loss
        n_loss += 1
        bar.update(1)
        if step % cfg["eval_every"] == 0 or step == cfg["max_steps"]:
            tr = (run_loss / n_loss).item()
            if not math.isfinite(tr):
                raise FloatingPointError(f"non-finite training loss at step {step} (lr {lr_at(step, cfg):.2e})")
            val = evaluate(model, data["val"], cfg)
            secs = time.perf_counter() - t0
            for k, v in zip(("step", "seconds", "train", "val", "lr"), (step, secs, tr, val, lr_at(step, cfg))):
                history[k].append(v)
            run_loss, n_loss = torch.zeros((), device=device), 0
            bar.set_postfix(val=f"{val:.3f}")
            say(f"step {step:5d}/{cfg['max_steps']} | train {tr:.4f} | val {val:.4f} | lr {lr_at(step, cfg):.2e} | "
                f"{secs:6.1f} s", file=sys.stdout, flush=True)
            if cfg["save_every"] is None or step % cfg["save_every"] == 0 or step == cfg["max_steps"]:
                checkpoint()
    bar.close()
    seconds = time.perf_counter() - t0
    result = {"model": model, "tokenizer": tok, "history": history, "config": cfg, "model_config": mcfg,
              "val_loss": history["val"][-1] if history["val"] else evaluate(model, data["val"], cfg),
              "seconds": seconds, "steps": step,
              "tokens_per_s": step * cfg["batch_size"] * cfg["block_size"] / max(seconds, 1e-9)}
    if cfg["test"]:
        result["test_loss"] = evaluate(model, data["test"], cfg)
        say(f"test loss {result['test_loss']:.4f}")
    if world > 1:
        dist.barrier()
    return result


def _parse_value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_args(argv=None) -> dict:
    """Command-line flags (``--key value`` for every config key, ``--preset``, ``--config``) as a config dict."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default=None, help="start from a named config")
    p.add_argument("--config", default=None, help="a .json or .toml file of config keys")
    for key, default in DEFAULTS.items():
        p.add_argument(f"--{key}", type=_parse_value, default=None, help=f"default {default!r}")
    args = vars(p.parse_args(argv))
    flags = {k: v for k, v in args.items() if k in DEFAULTS and v is not None}
    base = preset(args["preset"]) if args["preset"] else dict(DEFAULTS)
    file = load_config_file(args["config"]) if args["config"] else {}
    return _merge(base, file, flags)


def main(argv=None) -> dict:
    """The command-line entry point: parse ``argv`` and :func:`run`; under torchrun, leave the process group."""
    cfg = parse_args(argv)
    try:
        return run(cfg)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
