"""Tests for 04-transformers/04-gpt: gpt.py (the model, KV cache, sampling) and train.py (the trainer, DDP)."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import common
from common.topics import topic_dir

gpt = common.topic("gpt")
HERE = topic_dir("04-transformers/04-gpt")
train = gpt._trainer()  # train.py, imported as gpt_train

D = torch.float64


def _model(seed=0, dtype=D, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=8)
    cfg.update(kw)
    return gpt.GPT(gpt.GPTConfig(**cfg)).to(dtype)


def _tiny(**kw):
    """A tiny float64 training config on the smoke text (the autouse fixture sets the smoke scale)."""
    cfg = dict(n_layer=1, n_head=2, n_embd=8, block_size=8, batch_size=8, max_steps=4, eval_every=2,
               eval_tokens=256, dtype="float64", progress=False, verbose=False)
    return train.preset("smoke", **{**cfg, **kw})


# ----------------------------------------------------------------------------- model


def test_explicit_attention_equals_sdpa():
    torch.manual_seed(0)
    q = torch.randn(2, 3, 7, 5, dtype=D)
    k, v = torch.randn(2, 3, 7, 5, dtype=D), torch.randn(2, 3, 7, 5, dtype=D)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert (gpt.causal_attention(q, k, v) - ref).abs().max().item() < 1e-12
    # queries at the end of a longer key sequence (the cached case) against an explicit boolean mask
    mask = torch.ones(3, 7, dtype=torch.bool).tril(diagonal=4)
    ref = F.scaled_dot_product_attention(q[:, :, -3:], k, v, attn_mask=mask)
    assert (gpt.causal_attention(q[:, :, -3:], k, v) - ref).abs().max().item() < 1e-12


def test_model_sdpa_path_equals_explicit_path_outputs_and_grads():
    m = _model()
    idx = torch.randint(0, 11, (3, 16))
    tgt = torch.randint(0, 11, (3, 16))
    logits_s, loss_s = m(idx, tgt)
    g_s = torch.autograd.grad(loss_s, list(m.parameters()))
    m.set_explicit_attention(True)
    logits_e, loss_e = m(idx, tgt)
    g_e = torch.autograd.grad(loss_e, list(m.parameters()))
    assert (logits_s - logits_e).abs().max().item() < 1e-10
    assert max((a - b).abs().max().item() for a, b in zip(g_s, g_e)) < 1e-10


def test_shapes_tied_weights_and_gpt2_init():
    m = _model(dtype=torch.float32)
    logits, loss = m(torch.randint(0, 11, (4, 9)))
    assert logits.shape == (4, 9, 11) and loss is None
    _, loss = m(torch.randint(0, 11, (4, 9)), torch.randint(0, 11, (4, 9)))
    assert loss.shape == () and abs(loss.item() - math.log(11)) < 0.1  # small init: near-uniform predictions
    assert m.lm_head.weight is m.wte.weight
    c = m.cfg
    assert m.num_params(non_embedding=False) - m.num_params() == (c.vocab_size + c.block_size) * c.n_embd
    assert m.num_params() == c.n_layer * (12 * c.n_embd ** 2 + 13 * c.n_embd) + 2 * c.n_embd
    torch.manual_seed(0)
    big = gpt.GPT(gpt.GPTConfig(vocab_size=50, block_size=8, n_layer=8, n_head=4, n_embd=256))
    assert abs(big.h[0].attn.c_attn.weight.std().item() - 0.02) < 0.001
    for name in ("attn.c_proj", "mlp.c_proj"):  # residual projections: 0.02 / sqrt(2 n_layer)
        w = big.h[3].get_submodule(name).weight
        assert abs(w.std().item() - 0.02 / math.sqrt(16)) < 0.0005
    assert big.h[0].attn.c_attn.bias.abs().max().item() == 0.0


def test_causal_future_tokens_do_not_change_earlier_logits():
    m = _model()
    a = torch.randint(0, 11, (1, 12))
    b = a.clone()
    b[0, 8:] = (b[0, 8:] + 1) % 11
    assert torch.equal(m(a)[0][:, :8], m(b)[0][:, :8])


def test_kv_cache_gives_the_uncached_logits():
    m = _model().eval()
    prompt = torch.randint(0, 11, (2, 3))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    # 30 new tokens run past the 16-token context, so the cache is rebuilt along the way
    ids_c, lg_c = m.generate(prompt, 30, temperature=0.8, top_k=5, use_cache=True, generator=g1, return_logits=True)
    ids_u, lg_u = m.generate(prompt, 30, temperature=0.8, top_k=5, use_cache=False, generator=g2, return_logits=True)
    assert ids_c.shape == (2, 33) and lg_c.shape == (2, 30, 11)
    assert torch.equal(ids_c, ids_u)
    assert (lg_c - lg_u).abs().max().item() < 1e-12


def test_generate_top_k_one_is_greedy_and_temperature_scales():
    m = _model().eval()
    prompt = torch.randint(0, 11, (1, 4))
    ids, logits = m.generate(prompt, 5, top_k=1, return_logits=True)
    assert torch.equal(ids[0, 4:], logits[0].argmax(-1))
    _, l2 = m.generate(prompt, 1, temperature=2.0, return_logits=True)
    _, l1 = m.generate(prompt, 1, temperature=1.0, return_logits=True)
    assert torch.allclose(l2 * 2.0, l1)
    assert torch.equal(m.generate(prompt, 0), prompt)


def test_load_state_and_checkpoint_round_trip(tmp_path):
    m = _model(dtype=torch.float32)
    path = tmp_path / "m.pt"
    torch.save({"model": m.state_dict(), "model_config": vars(m.cfg)}, path)
    m2, ckpt = gpt.load_checkpoint(path)
    x = torch.randint(0, 11, (2, 5))
    assert torch.equal(m(x)[0], m2(x)[0])
    with pytest.raises(ValueError, match="another model shape.*expects"):
        gpt.load_checkpoint(path, cfg=gpt.GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16))
    with pytest.raises(ValueError, match="missing"):
        gpt.load_state(_model(n_layer=3, dtype=torch.float32), m.state_dict())


def test_learning_sanity_overfits_a_pattern():
    torch.manual_seed(0)
    m = gpt.GPT(gpt.GPTConfig(vocab_size=7, block_size=12, n_layer=2, n_head=2, n_embd=16))
    seq = torch.tensor([0, 1, 2, 3, 4, 5, 6] * 4)
    x, y = seq[:-1].unfold(0, 12, 1), seq[1:].unfold(0, 12, 1)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    for _ in range(100):
        _, loss = m(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


def test_bad_input():
    with pytest.raises(ValueError, match=r"unknown GPTConfig key\(s\) \['n_embed'\]; valid keys are .*n_embd"):
        gpt.GPTConfig.from_dict({"n_embed": 64})
    with pytest.raises(ValueError, match="n_embd must be divisible by n_head, got n_embd=10, n_head=4"):
        gpt.GPTConfig(n_embd=10, n_head=4)
    with pytest.raises(ValueError, match="n_layer must be an int >= 1"):
        gpt.GPTConfig(n_layer=0)
    with pytest.raises(ValueError, match="dropout must be < 1"):
        gpt.GPTConfig(dropout=1.0)
    with pytest.raises(ValueError, match="unknown GPTConfig key"):
        gpt.GPT(n_layers=2)
    m = _model()
    with pytest.raises(ValueError, match="17 tokens is longer than the context block_size=16"):
        m(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="rank 2"):
        m(torch.zeros(16, dtype=torch.long))
    with pytest.raises(ValueError, match="must hold integers"):
        m(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="empty batch"):
        m(torch.zeros(0, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="targets must have the shape"):
        m(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))
    p = torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="top_k must be an int >= 1"):
        m.generate(p, 2, top_k=0)
    with pytest.raises(ValueError, match="top_k must be an int <= 11"):
        m.generate(p, 2, top_k=12)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        m.generate(p, 2, temperature=0.0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        m.generate(p, 2, temperature=-1.0)
    with pytest.raises(ValueError, match="max_new_tokens must be an int >= 0"):
        m.generate(p, -1)
    with pytest.raises(ValueError, match="at least as many keys as queries"):
        gpt.causal_attention(torch.zeros(1, 1, 3, 2), torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))


# ----------------------------------------------------------------------------- trainer


def test_lr_schedule_and_batches():
    cfg = train.preset("cpu", lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=110)
    assert train.lr_at(5, cfg) == pytest.approx(5e-4)
    assert train.lr_at(10, cfg) == pytest.approx(1e-3)
    assert train.lr_at(60, cfg) == pytest.approx(5.5e-4)
    assert train.lr_at(110, cfg) == pytest.approx(1e-4) and train.lr_at(500, cfg) == pytest.approx(1e-4)
    data = torch.arange(1000)
    cfg = train.preset("cpu", batch_size=8, block_size=5, grad_accum=2)
    [(x1, y1), (x2, y2)] = train.get_batch(data, 3, cfg)
    assert x1.shape == (4, 5) and torch.equal(y1, x1 + 1)  # windows of consecutive ids, shifted by one
    again = train.get_batch(data, 3, cfg)
    assert torch.equal(again[0][0], x1)  # the batch is a function of (seed, step)
    r0, r1 = train.get_batch(data, 3, cfg, rank=0, world=2), train.get_batch(data, 3, cfg, rank=1, world=2)
    assert torch.equal(torch.cat([r0[0][0], r0[1][0], r1[0][0], r1[1][0]]), torch.cat([x1, x2]))


def test_gradient_accumulation_equals_one_big_batch():
    a = train.run(_tiny(grad_accum=1))
    b = train.run(_tiny(grad_accum=4))
    for p, q in zip(a["model"].parameters(), b["model"].parameters()):
        assert (p - q).abs().max().item() < 1e-10


def test_resume_equals_uninterrupted(tmp_path):
    full = train.run(_tiny(max_steps=6, out=str(tmp_path / "a.pt")))
    train.run(_tiny(max_steps=3, out=str(tmp_path / "b.pt")))
    resumed = train.run(_tiny(max_steps=6, out=str(tmp_path / "b.pt"), resume=True))
    assert resumed["steps"] == 6
    for p, q in zip(full["model"].parameters(), resumed["model"].parameters()):
        assert torch.equal(p, q)
    at = dict(zip(resumed["history"]["step"], resumed["history"]["val"]))  # also holds step 3's eval
    assert full["history"]["step"] == [2, 4, 6] and [at[s] for s in (2, 4, 6)] == full["history"]["val"]
    ckpt = torch.load(tmp_path / "b.pt", weights_only=True)
    assert ckpt["step"] == 6 and "".join(ckpt["vocab"]) == "".join(full["tokenizer"].chars)
    # a checkpoint of another shape is refused on resume
    with pytest.raises(ValueError, match="another model shape"):
        train.run(_tiny(max_steps=8, n_embd=16, out=str(tmp_path / "b.pt"), resume=True))


def test_two_gloo_processes_equal_one_process(tmp_path):
    """torchrun with 2 CPU processes (gloo) gives the parameters of 1 process on the same global batch."""
    args = ["--preset", "smoke", "--n_layer", "1", "--n_head", "2", "--n_embd", "8", "--block_size", "8",
            "--batch_size", "8", "--max_steps", "4", "--eval_every", "2", "--eval_tokens", "256",
            "--dtype", "float64", "--progress", "false", "--verbose", "false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "ddp.pt"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(HERE / "train.py"), *args, "--out", str(out)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = torch.load(out, weights_only=True)["model"]
    one = train.run(_tiny())["model"].state_dict()
    assert ddp.keys() == one.keys()
    assert max((ddp[k] - one[k]).abs().max().item() for k in one) < 1e-9


def test_world_size_that_does_not_divide_the_batch(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match=r"batch_size=8 must be divisible by world_size x grad_accum = 3 x 1 = 3"):
        train.run(_tiny())
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(ValueError, match="divisible by world_size x grad_accum = 1 x 3"):
        train.run(_tiny(grad_accum=3))


def test_config_sources_and_cli(tmp_path, capsys):
    (tmp_path / "c.json").write_text(json.dumps({"n_embd": 16, "max_steps": 2}))
    (tmp_path / "c.toml").write_text("n_embd = 16\nmax_steps = 2\nbias = false\n")
    assert train.load_config_file(tmp_path / "c.toml") == {"n_embd": 16, "max_steps": 2, "bias": False}
    cfg = train.parse_args(["--preset", "cpu", "--config", str(tmp_path / "c.json"), "--max_steps", "3"])
    assert cfg["n_embd"] == 16 and cfg["max_steps"] == 3 and cfg["lr"] == train.PRESETS["cpu"]["lr"]
    r = train.main(["--preset", "smoke", "--max_steps", "2", "--eval_every", "1", "--progress", "false"])
    assert r["steps"] == 2 and len(r["history"]["val"]) == 2
    assert "step     2/2 | train" in capsys.readouterr().out  # the plain log line per eval
    (tmp_path / "bad.json").write_text(json.dumps({"n_embed": 16}))
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['n_embed'\]; valid keys are"):
        train.load_config_file(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="must end in .json or .toml"):
        train.load_config_file(tmp_path / "c.yaml")
    with pytest.raises(ValueError, match="unknown config key"):
        train.preset("cpu", learning_rate=1.0)
    with pytest.raises(ValueError, match="preset must be one of"):
        train.preset("huge")
    with pytest.raises(ValueError, match="dtype must be one of"):
        train.run(_tiny(dtype="float16"))


def test_load_or_train_trains_once_then_loads(tmp_path):
    path = tmp_path / "ck.pt"
    m1, ck1 = gpt.load_or_train("smoke", path=path, max_steps=3, eval_every=3, progress=False, verbose=False)
    assert path.exists() and ck1["step"] == 3 and isinstance(m1, gpt.GPT)
    m2, _ = gpt.load_or_train("smoke", path=path)
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)
    assert ck1["train_config"]["synthetic"] is True  # the smoke scale trains on the stand-in text, and says so


def test_benches_return_their_keys():
    cfg = gpt.GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)
    for fn, kw in ((gpt.bench_train_step, {"batch": 2}), (gpt.bench_vs_torch, {"batch": 2}),
                   (gpt.bench_generate, {"new_tokens": 7}), (gpt.bench_mfu, {"batch": 2})):
        r = fn(cfg=cfg, repeats=1, **kw)
        assert {"ours_ms", "theirs_ms", "ratio", "name"} <= set(r)
        assert r["ratio"] > 0 and math.isclose(r["ratio"], r["ours_ms"] / r["theirs_ms"])
    r = gpt.bench_mfu(cfg=cfg, batch=2, repeats=1)
    assert 0 < r["mfu"] and math.isclose(r["achieved_flops"], r["mfu"] * r["peak_flops"])
    assert gpt.train_flops_per_token(cfg) == 6 * (12 * 64 + 88) + 6 * 8 * 8
    c = gpt.cpu_config(block_size=300)
    assert (c.n_layer, c.n_embd, c.block_size) == (train.PRESETS["cpu"]["n_layer"], train.PRESETS["cpu"]["n_embd"], 300)
