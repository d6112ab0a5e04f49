"""RLHF: a reward model learned from pairwise comparisons, then PPO against it with a KL penalty.

The recipe of Ziegler et al. (2019, "Fine-Tuning Language Models from Human Preferences", Sec. 2) and of
InstructGPT (Ouyang et al. 2022, Sec. 3.5), on 4.4's character-level GPT:

1. a **labeller** compares two continuations of the same prompt (a rule in code stands in for the humans);
2. a **reward model** r(x, y), the GPT trunk with a scalar head, is fitted to the comparisons with the
   Bradley-Terry loss -log sigmoid(r(x, y_w) - r(x, y_l)) (InstructGPT eq. 1);
3. the **policy** pi, a copy of the pre-trained model rho, is trained with PPO's clipped objective
   (Schulman et al. 2017, eq. 7) on the reward R(x, y) = r(x, y) - beta log pi(y|x) / rho(y|x) (Ziegler eq. 2,
   InstructGPT eq. 2), the log-ratio paid token by token and r added at the last token; advantages by GAE
   (Schulman et al. 2016; PPO eqs. 11-12) from a value model initialised from the reward model (InstructGPT
   Sec. 3.5). Rollouts sample with the GPT's key/value cache.

Sequences are prompt (P tokens) + response (N tokens); token t of the response is predicted at position P - 1 + t.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import common
import common.bench
from common.checks import check_float, check_int, check_tensor

gpt = common.topic("gpt")


# ----------------------------------------------------------------------------- the labeller


def make_lexicon(text: str, letter: str | None = "w") -> set[str]:
    """The lower-case words (runs of letters) of ``text`` that begin with ``letter`` (every word with ``None``):
    the labeller's word list."""
    if letter is not None and (not isinstance(letter, str) or len(letter) != 1 or not letter.isalpha()):
        raise ValueError(f"letter must be one alphabetic character or None, got {letter!r}")
    if not isinstance(text, str):
        raise ValueError(f"text must be a string, got {type(text).__name__}")
    return {w for w in re.findall(r"[a-z]+", text.lower()) if letter is None or w.startswith(letter.lower())}


def true_reward(texts: list[str], lexicon: set[str]) -> torch.Tensor:
    """The labeller's score of each text: how many of its words (letter runs, case ignored) are in ``lexicon``.
    The preference in one sentence: *more real words that begin with the letter is better*. Returns (B,) float."""
    if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"texts must be a list of strings, got {type(texts).__name__}")
    return torch.tensor([float(sum(w in lexicon for w in re.findall(r"[a-z]+", t.lower()))) for t in texts])


def label_pairs(texts_a: list[str], texts_b: list[str], lexicon: set[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Compare ``texts_a[i]`` with ``texts_b[i]`` (two continuations of one prompt). Returns ``(a_wins, keep)``,
    both (B,) bool: ``keep`` is False for ties, which are dropped (as InstructGPT's Appendix C.2 does)."""
    common.checks.check_same_length("label_pairs", texts_a, texts_b)
    ra, rb = true_reward(texts_a, lexicon), true_reward(texts_b, lexicon)
    return ra > rb, ra != rb


# ----------------------------------------------------------------------------- reward model


def hidden_states(model, idx: torch.Tensor) -> torch.Tensor:
    """The GPT's last hidden states, after its final layer norm: ids (B, T) -> (B, T, C) (no output layer)."""
    check_tensor("idx", idx, dim=2, integer=True)
    if idx.shape[1] > model.cfg.block_size:
        raise ValueError(f"sequence of {idx.shape[1]} tokens is longer than the context {model.cfg.block_size}")
    x = model.drop(model.wte(idx) + model.wpe(torch.arange(idx.shape[1], device=idx.device)))  # (B, T, C)
    for block in model.h:
        x = block(x)
    return model.ln_f(x)


def pad(seqs: list[torch.Tensor], value: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D id tensors to one length: ``(ids (B, T), mask (B, T) bool, True on real tokens)``."""
    if not seqs:
        raise ValueError("pad needs at least one sequence, got none")
    for i, s in enumerate(seqs):
        check_tensor(f"sequence {i}", s, dim=1, integer=True)
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), value, dtype=seqs[0].dtype, device=seqs[0].device)
    mask = torch.zeros(len(seqs), T, dtype=torch.bool, device=seqs[0].device)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = s, True
    return ids, mask


class RewardModel(nn.Module):
    """r(x, y): a copy of a GPT's trunk (its output layer unused, as InstructGPT removes the unembedding) and a
    linear head on the hidden state of the **last real token**, with an affine normalisation (Ziegler Sec. 2.1:
    mean 0, variance 1 on the initial policy's samples). :meth:`per_token` applies the head at every position:
    the value model V(s_t) of PPO is a copy of a reward model."""

    def __init__(self, base):
        super().__init__()
        self.gpt = copy.deepcopy(base)
        self.head = nn.Linear(base.cfg.n_embd, 1)
        nn.init.normal_(self.head.weight, 0.0, 1.0 / base.cfg.n_embd ** 0.5)  # a random linear function (Ziegler)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("shift", torch.zeros(()))
        self.register_buffer("gain", torch.ones(()))

    def per_token(self, idx: torch.Tensor) -> torch.Tensor:
        """Scores at every position (B, T): position t reads tokens 0..t only (the trunk is causal)."""
        return (self.head(hidden_states(self.gpt, idx)).squeeze(-1) - self.shift) * self.gain

    def forward(self, seqs, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Scores (B,) of ``seqs``: ids (B, T), or a list of 1-D id tensors. Sequences of different lengths need
        ``mask`` (B, T), True on the real tokens, which come first (see :func:`pad`); the score is read at each
        sequence's last real token, so padding after it changes nothing."""
        if isinstance(seqs, (list, tuple)):
            lengths = {len(s) for s in seqs}
            if len(lengths) > 1 and mask is None:
                raise ValueError(f"sequences of different lengths {sorted(lengths)} need a mask: pad them with "
                                 "rlhf.pad(seqs) and pass its mask")
            seqs = torch.stack(list(seqs)) if mask is None else pad(list(seqs))[0]
        check_tensor("seqs", seqs, dim=2, integer=True)
        if mask is None:
            last = torch.full((seqs.shape[0],), seqs.shape[1] - 1, device=seqs.device)
        else:
            check_tensor("mask", mask, dim=2)
            if mask.shape != seqs.shape or mask.dtype != torch.bool:
                raise ValueError(f"mask must be bool of the ids' shape {tuple(seqs.shape)}, got {mask.dtype} "
                                 f"{tuple(mask.shape)}")
            n = mask.sum(1)
            if (n == 0).any() or (mask != (torch.arange(mask.shape[1], device=mask.device) < n[:, None])).any():
                raise ValueError("mask must mark a non-empty prefix of each row (real tokens first, padding after)")
            last = n - 1
        scores = self.per_token(seqs)  # (B, T)
        return scores.gather(1, last[:, None]).squeeze(1)

    @torch.no_grad()
    def normalize_(self, idx: torch.Tensor, batch: int = 256) -> RewardModel:
        """Set the affine normalisation so that the scores of ``idx`` (B, T) have mean 0 and std 1."""
        self.shift.zero_(), self.gain.fill_(1.0)
        r = torch.cat([self(idx[i:i + batch]) for i in range(0, len(idx), batch)])
        self.shift.fill_(r.mean()), self.gain.fill_(1.0 / r.std().clamp_min(1e-6))
        return self


def preference_loss(r_w: torch.Tensor, r_l: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry loss, mean of -log sigmoid(r_w - r_l) over pairs (InstructGPT eq. 1, Ziegler eq. 1 for
    K = 2): r_w - r_l is the log-odds that the preferred continuation wins."""
    check_tensor("r_w", r_w, dim=1, floating=True)
    if r_l.shape != r_w.shape:
        raise ValueError(f"r_w and r_l must have one shape, got {tuple(r_w.shape)} and {tuple(r_l.shape)}")
    return -F.logsigmoid(r_w - r_l).mean()


@torch.no_grad()
def pairwise_accuracy(rm: RewardModel, chosen: torch.Tensor, rejected: torch.Tensor, batch: int = 256) -> float:
    """Share of pairs (rows of ``chosen``, ``rejected``, both (B, T)) that ``rm`` scores in the labeller's order."""
    check_tensor("chosen", chosen, dim=2, integer=True)
    if rejected.shape != chosen.shape:
        raise ValueError(f"rejected must have chosen's shape {tuple(chosen.shape)}, got {tuple(rejected.shape)}")
    wins = [rm(chosen[i:i + batch]) > rm(rejected[i:i + batch]) for i in range(0, len(chosen), batch)]
    return torch.cat(wins).float().mean().item()


def train_reward_model(rm: RewardModel, chosen: torch.Tensor, rejected: torch.Tensor, epochs: int = 1,
                       batch: int = 32, lr: float = 1e-4, generator=None) -> list[float]:
    """Fit ``rm`` to the comparisons (``chosen[i]`` preferred to ``rejected[i]``, (B, T) ids) with Adam on the
    Bradley-Terry loss, ``epochs`` shuffled passes (InstructGPT and Ziegler use one); returns each step's loss."""
    check_int("epochs", epochs, low=1), check_int("batch", batch, low=1)
    check_float("lr", lr, 0.0, low_open=True)
    if rejected.shape != chosen.shape:
        raise ValueError(f"rejected must have chosen's shape {tuple(chosen.shape)}, got {tuple(rejected.shape)}")
    opt, losses = torch.optim.Adam(rm.parameters(), lr=lr), []
    rm.train()
    for _ in range(epochs):
        order = torch.randperm(len(chosen), generator=generator, device=chosen.device)
        for mb in common.progress(order.split(batch), desc="reward model", leave=False):
            loss = preference_loss(rm(chosen[mb]), rm(rejected[mb]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return losses


# ----------------------------------------------------------------------------- PPO pieces


def gae(rewards: torch.Tensor, values: torch.Tensor, gamma: float = 1.0, lam: float = 0.95):
    """Generalised advantage estimation (PPO eqs. 11-12): A_t = sum_l (gamma lam)^l delta_{t+l}, delta_t =
    r_t + gamma V_{t+1} - V_t, with V = 0 after the last token (the episode ends). ``rewards``, ``values``
    (B, T). Written as one matrix product with M[s, t] = (gamma lam)^(s - t) for s >= t instead of a reverse
    loop. Returns ``(advantages, returns = advantages + values)``, both (B, T)."""
    check_tensor("rewards", rewards, dim=2, floating=True)
    if values.shape != rewards.shape:
        raise ValueError(f"values must have the rewards' shape {tuple(rewards.shape)}, got {tuple(values.shape)}")
    gamma, lam = check_float("gamma", gamma, 0.0, 1.0), check_float("lam", lam, 0.0, 1.0)
    T = rewards.shape[1]
    nxt = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], 1)  # V_{t+1}, 0 after the end
    delta = rewards + gamma * nxt - values  # (B, T)
    k = torch.arange(T, device=rewards.device)
    power = (k[:, None] - k[None, :]).to(rewards.dtype)  # (s, t): s - t
    m = torch.where(power >= 0, (gamma * lam) ** power.clamp_min(0), torch.zeros_like(power))
    adv = delta @ m  # adv[:, t] = sum_s delta[:, s] (gamma lam)^(s - t)
    return adv, adv + values


def kl_rewards(score: torch.Tensor, logp: torch.Tensor, logp_ref: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-token rewards (B, N): -beta (log pi - log rho) at each sampled token, plus the reward model's
    ``score`` (B,) at the last one; summed they are R(x, y) of Ziegler eq. 2 / InstructGPT eq. 2."""
    beta = check_float("beta (KL coefficient)", beta, 0.0)
    check_tensor("logp", logp, dim=2, floating=True)
    if logp_ref.shape != logp.shape or score.shape != logp.shape[:1]:
        raise ValueError(f"logp_ref must be {tuple(logp.shape)} and score ({logp.shape[0]},), got "
                         f"{tuple(logp_ref.shape)} and {tuple(score.shape)}")
    rewards = -beta * (logp - logp_ref)
    rewards[:, -1] += score
    return rewards


def clipped_surrogate(logp: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor, eps: float = 0.2):
    """PPO's objective to maximise (Schulman et al. 2017, eq. 7): mean of min(r A, clip(r, 1 - eps, 1 + eps) A),
    r = pi(a|s) / pi_old(a|s) = exp(logp - logp_old); all (B, N). Returns ``(objective, share of clipped terms)``."""
    eps = check_float("clip epsilon", eps, 0.0, low_open=True)
    if not (logp.shape == logp_old.shape == adv.shape):
        raise ValueError(f"logp, logp_old, adv need one shape, got {tuple(logp.shape)}, {tuple(logp_old.shape)}, "
                         f"{tuple(adv.shape)}")
    ratio = torch.exp(logp - logp_old)
    unclipped, clipped = ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv
    return torch.minimum(unclipped, clipped).mean(), (clipped < unclipped).to(ratio.dtype).mean()


def response_logprobs(model, ids: torch.Tensor, prompt_len: int, full: bool = False):
    """log pi(y_t | x, y_<t) of the response tokens ``ids[:, prompt_len:]``: (B, N); with ``full`` also the
    log-probabilities of the whole vocabulary at those steps (B, N, V)."""
    check_int("prompt_len", prompt_len, low=1, high=ids.shape[1] - 1)
    logits, _ = model(ids)
    logprobs = F.log_softmax(logits[:, prompt_len - 1:-1].float(), dim=-1)  # (B, N, V)
    taken = logprobs.gather(-1, ids[:, prompt_len:, None]).squeeze(-1)
    return (taken, logprobs) if full else taken


@torch.no_grad()
def kl_to_reference(policy, ref, ids: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """KL(pi || rho) of each sampled continuation (B,), in nats: the exact per-step KL over the vocabulary,
    sum_v pi(v) (log pi(v) - log rho(v)), summed over the response's steps (each >= 0)."""
    _, lp = response_logprobs(policy, ids, prompt_len, full=True)
    _, lr = response_logprobs(ref, ids, prompt_len, full=True)
    return (lp.exp() * (lp - lr)).sum(-1).sum(-1)


@torch.no_grad()
def rollout(policy, prompts: torch.Tensor, n_new: int, use_cache: bool = True, generator=None) -> torch.Tensor:
    """Sample ``n_new`` tokens after each prompt (B, P) at temperature 1, no top-k (the policy itself is the
    sampler, as PPO needs): ids (B, P + n_new); with ``use_cache`` through the GPT's key/value cache."""
    check_tensor("prompts", prompts, dim=2, integer=True)
    check_int("n_new", n_new, low=1, high=policy.cfg.block_size - prompts.shape[1])
    was = policy.training
    policy.eval()
    out = policy.generate(prompts, n_new, use_cache=use_cache, generator=generator)
    policy.train(was)
    return out


@dataclass
class PPOConfig:
    """PPO hyper-parameters: response length, KL coefficient beta (>= 0), clip epsilon (> 0), GAE gamma and
    lambda, epochs and minibatch size per batch of rollouts, learning rates, gradient-norm clip."""

    n_new: int = 48
    beta: float = 0.1
    clip_eps: float = 0.2
    gamma: float = 1.0
    lam: float = 0.95
    epochs: int = 4
    minibatch: int = 32
    lr: float = 1e-4
    value_lr: float = 1e-4
    max_grad_norm: float = 1.0

    def __post_init__(self):
        check_float("beta (KL coefficient)", self.beta, 0.0)
        check_float("clip_eps", self.clip_eps, 0.0, low_open=True)
        check_float("gamma", self.gamma, 0.0, 1.0), check_float("lam", self.lam, 0.0, 1.0)
        for name in ("n_new", "epochs", "minibatch"):
            check_int(name, getattr(self, name), low=1)
        for name in ("lr", "value_lr", "max_grad_norm"):
            check_float(name, getattr(self, name), 0.0, low_open=True)


class PPO:
    """The policy pi (a trainable copy of ``base``), the frozen reference rho (another copy), a value model
    (a copy of ``value_init``, a :class:`RewardModel`), their Adam optimisers, and :meth:`step`."""

    def __init__(self, base, value_init: RewardModel, cfg: PPOConfig):
        if not isinstance(cfg, PPOConfig):
            raise ValueError(f"cfg must be a PPOConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.policy, self.ref, self.value = copy.deepcopy(base), copy.deepcopy(base), copy.deepcopy(value_init)
        self.policy.requires_grad_(True), self.value.requires_grad_(True)  # trainable, whatever the originals were
        self.ref.requires_grad_(False).eval()
        self.opt_pi = torch.optim.Adam(self.policy.parameters(), lr=cfg.lr)
        self.opt_v = torch.optim.Adam(self.value.parameters(), lr=cfg.value_lr)

    def step(self, prompts: torch.Tensor, score_fn, generator=None) -> dict:
        """One PPO iteration: roll out on ``prompts`` (B, P), score with ``score_fn(ids) -> (B,)``, shape the
        rewards with the KL penalty, GAE, then ``epochs`` passes of minibatch updates of the clipped objective
        and the value loss (V - return)^2 (PPO eq. 9; separate networks, so no c1). Returns the samples and
        the batch's mean score, KL estimate (sum over tokens of log pi - log rho), value loss, clip share."""
        c, P = self.cfg, prompts.shape[1]
        ids = rollout(self.policy, prompts, c.n_new, generator=generator)  # (B, P + N), KV cache
        with torch.no_grad():
            score = score_fn(ids).float()  # (B,)
            logp_old = response_logprobs(self.policy, ids, P)  # (B, N)
            logp_ref = response_logprobs(self.ref, ids, P)
            v_old = self.value.per_token(ids)[:, P - 1:-1]  # V(s_t) read where token t is predicted
            adv, ret = gae(kl_rewards(score, logp_old, logp_ref, c.beta), v_old, c.gamma, c.lam)
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)  # whitened per batch
        stats = {"value_loss": [], "clip_frac": [], "surrogate": []}
        for _ in range(c.epochs):
            for mb in torch.randperm(len(ids), generator=generator, device=ids.device).split(c.minibatch):
                obj, clip_frac = clipped_surrogate(response_logprobs(self.policy, ids[mb], P), logp_old[mb],
                                                   adv[mb], c.clip_eps)
                v_loss = (self.value.per_token(ids[mb])[:, P - 1:-1] - ret[mb]).pow(2).mean()
                for opt, loss, net in ((self.opt_pi, -obj, self.policy), (self.opt_v, v_loss, self.value)):
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    nn.utils.clip_grad_norm_(net.parameters(), c.max_grad_norm)
                    opt.step()
                for k, v in zip(stats, (v_loss, clip_frac, obj)):
                    stats[k].append(v.item())
        out = {k: sum(v) / len(v) for k, v in stats.items()}
        return {"ids": ids, "score": score.mean().item(), "kl": (logp_old - logp_ref).sum(1).mean().item(), **out}


# ----------------------------------------------------------------------------- benchmark


def bench_rollout(device="cpu", batch: int = 64, prompt_len: int = 32, new_tokens: int = 48,
                  repeats: int = 5) -> dict:
    """PPO's rollout, tokens sampled per second with the GPT's KV cache (ours) against recomputing the whole
    context every step (theirs): same policy (the cpu preset's shape, random weights), same prompts and length."""
    cfg = gpt.cpu_config()
    torch.manual_seed(0)
    policy = gpt.GPT(cfg).to(device)
    prompts = torch.randint(0, cfg.vocab_size, (batch, prompt_len), device=device)
    ours, theirs = common.bench.time_ab(lambda: rollout(policy, prompts, new_tokens, use_cache=True),
                              lambda: rollout(policy, prompts, new_tokens, use_cache=False), repeats)
    tok = batch * new_tokens
    return {"name": f"[{device}] PPO rollout {batch} x {new_tokens} tokens, KV cache vs none", "ours_ms": ours,
            "theirs_ms": theirs, "ratio": ours / theirs, "cached_tok_per_s": tok / ours * 1e3,
            "uncached_tok_per_s": tok / theirs * 1e3}
