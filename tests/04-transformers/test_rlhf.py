"""Tests for 04-transformers/06-rlhf/rlhf.py (Ziegler et al. 2019; Schulman et al. 2017; Ouyang et al. 2022)."""

import math

import pytest
import torch

import common

rlhf = common.topic("rlhf")
gpt = common.topic("gpt")


def _tiny(vocab=5, block=24, seed=0):
    torch.manual_seed(seed)
    return gpt.GPT(gpt.GPTConfig(vocab_size=vocab, block_size=block, n_layer=1, n_head=2, n_embd=16))


# ----------------------------------------------------------------------------- labeller


def test_lexicon_and_true_reward_on_hand_strings():
    lex = rlhf.make_lexicon("What will we do? Walk with me, sweet Will. Away!", "w")
    assert lex == {"what", "will", "we", "walk", "with"}  # "sweet", "away" do not begin with w
    r = rlhf.true_reward(["We will walk.", "wwww ww w", "Away, sweet sir", "WHAT? what!"], lex)
    assert r.tolist() == [3.0, 0.0, 0.0, 2.0]  # made-up w-words do not count; case is ignored


def test_label_pairs_drops_ties():
    lex = {"we", "will"}
    a_wins, keep = rlhf.label_pairs(["we will", "no", "we"], ["we", "will", "will"], lex)
    assert a_wins.tolist() == [True, False, False] and keep.tolist() == [True, True, False]


@pytest.mark.parametrize("bad", [["a"], "wx", "", 3])
def test_labeller_bad_input(bad):
    with pytest.raises(ValueError):
        if isinstance(bad, list):
            rlhf.label_pairs(bad, ["a", "b"], set())
        elif bad == 3:
            rlhf.true_reward(bad, set())
        else:
            rlhf.make_lexicon("text", bad)


# ----------------------------------------------------------------------------- reward model


def test_preference_loss_by_hand():
    r_w, r_l = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([1.0, 0.0, 1.0])
    want = (math.log(1 + math.exp(-1)) + math.log(2) + math.log(1 + math.exp(2))) / 3
    assert abs(rlhf.preference_loss(r_w, r_l).item() - want) < 1e-6
    with pytest.raises(ValueError):
        rlhf.preference_loss(r_w, r_l[:2])


def test_hidden_states_give_the_gpt_logits():
    m = _tiny().double()
    idx = torch.randint(0, 5, (3, 10))
    logits, _ = m(idx)
    assert (m.lm_head(rlhf.hidden_states(m, idx)) - logits).abs().max().item() < 1e-12


def test_reward_model_padding_does_not_change_the_score():
    rm = rlhf.RewardModel(_tiny())
    seqs = [torch.randint(0, 5, (n,)) for n in (7, 12, 3)]
    ids, mask = rlhf.pad(seqs)
    assert ids.shape == (3, 12) and mask.sum(1).tolist() == [7, 12, 3]
    batched = rm(ids, mask)
    alone = torch.stack([rm(s[None])[0] for s in seqs])
    assert batched.shape == (3,) and (batched - alone).abs().max().item() < 1e-6
    ids2 = ids.clone()
    ids2[~mask] = 4  # other padding values
    assert (rm(ids2, mask) - batched).abs().max().item() < 1e-6
    assert (rm(seqs, mask) - batched).abs().max().item() < 1e-6  # a list with its mask is padded inside


def test_reward_model_bad_input():
    rm = rlhf.RewardModel(_tiny())
    with pytest.raises(ValueError, match="mask"):
        rm([torch.tensor([1, 2, 3]), torch.tensor([1, 2])])  # different lengths, no mask
    ids, mask = rlhf.pad([torch.tensor([1, 2, 3]), torch.tensor([1, 2])])
    with pytest.raises(ValueError):
        rm(ids, mask.long())
    with pytest.raises(ValueError):
        rm(ids, torch.tensor([[True, False, True], [True, True, False]]))  # not a prefix
    with pytest.raises(ValueError):
        rm(torch.randint(0, 5, (2, 30)))  # longer than the context
    with pytest.raises(ValueError):
        rlhf.pad([])
    assert rm([torch.tensor([1, 2]), torch.tensor([3, 4])]).shape == (2,)  # equal lengths need no mask


def test_reward_model_normalize_and_learning_sanity():
    torch.manual_seed(0)
    rm = rlhf.RewardModel(_tiny())
    x = torch.randint(0, 5, (64, 8))
    chosen, rejected = x.clone(), x.clone()
    chosen[:, -3:], rejected[:, -3:] = 3, 1  # the preferred sequences end in 3s
    before = rlhf.pairwise_accuracy(rm, chosen, rejected)
    losses = rlhf.train_reward_model(rm, chosen, rejected, epochs=10, batch=16, lr=3e-3,
                                     generator=torch.Generator().manual_seed(0))
    assert losses[-1] < 0.5 * losses[0] and rlhf.pairwise_accuracy(rm, chosen, rejected) == 1.0 > before
    rm.normalize_(torch.cat([chosen, rejected]))
    r = rm(torch.cat([chosen, rejected]))
    assert abs(r.mean().item()) < 1e-5 and abs(r.std().item() - 1) < 1e-4
    with pytest.raises(ValueError):
        rlhf.pairwise_accuracy(rm, chosen, rejected[:3])


# ----------------------------------------------------------------------------- PPO pieces


def _gae_loop(r, v, gamma, lam):
    adv, last = torch.zeros_like(r), torch.zeros_like(r[:, 0])
    for t in reversed(range(r.shape[1])):
        nxt = v[:, t + 1] if t + 1 < r.shape[1] else torch.zeros_like(last)
        delta = r[:, t] + gamma * nxt - v[:, t]
        last = delta + gamma * lam * last
        adv[:, t] = last
    return adv


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0), (0.99, 0.0)])
def test_gae_equals_reverse_loop(gamma, lam):
    g = torch.Generator().manual_seed(0)
    r, v = torch.randn(4, 17, generator=g, dtype=torch.float64), torch.randn(4, 17, generator=g, dtype=torch.float64)
    adv, ret = rlhf.gae(r, v, gamma, lam)
    assert (adv - _gae_loop(r, v, gamma, lam)).abs().max().item() < 1e-10
    assert (ret - (adv + v)).abs().max().item() == 0
    if lam == 1.0 and gamma == 1.0:  # lambda = 1: the return is the plain sum of the rewards to go (PPO eq. 10)
        assert (ret - r.flip(1).cumsum(1).flip(1)).abs().max().item() < 1e-10


def test_gae_bad_input():
    with pytest.raises(ValueError):
        rlhf.gae(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError):
        rlhf.gae(torch.zeros(2, 3), torch.zeros(2, 3), gamma=1.5)
    with pytest.raises(ValueError):
        rlhf.gae(torch.zeros(2, 3), torch.zeros(2, 3), lam=-0.1)


def test_kl_rewards_per_token():
    logp, logp_ref = torch.tensor([[-1.0, -2.0, -0.5]]), torch.tensor([[-1.5, -1.0, -0.5]])
    r = rlhf.kl_rewards(torch.tensor([3.0]), logp, logp_ref, beta=0.1)
    assert torch.allclose(r, torch.tensor([[-0.05, 0.1, 3.0]]))
    assert torch.allclose(rlhf.kl_rewards(torch.tensor([3.0]), logp, logp_ref, beta=0.0), torch.tensor([[0, 0, 3.0]]))
    with pytest.raises(ValueError):
        rlhf.kl_rewards(torch.tensor([3.0]), logp, logp_ref, beta=-0.1)
    with pytest.raises(ValueError):
        rlhf.kl_rewards(torch.tensor([3.0, 1.0]), logp, logp_ref, beta=0.1)


def test_clipped_surrogate_value_and_gradient_by_hand():
    eps = 0.2
    ratio = torch.tensor([[1.1, 1.5, 0.5, 1.5, 0.5]], dtype=torch.float64)
    adv = torch.tensor([[1.0, 2.0, 2.0, -1.0, -1.0]], dtype=torch.float64)
    logp_old = torch.zeros_like(ratio)
    logp = ratio.log().requires_grad_()
    obj, frac = rlhf.clipped_surrogate(logp, logp_old, adv, eps)
    # terms: inside the interval 1.1*1; A > 0 above 1+eps: clipped 1.2*2; A > 0 below: unclipped 0.5*2;
    # A < 0 above: unclipped -1.5; A < 0 below 1-eps: clipped 0.8*-1
    want = torch.tensor([1.1, 2.4, 1.0, -1.5, -0.8], dtype=torch.float64)
    assert abs(obj.item() - want.mean().item()) < 1e-12 and abs(frac.item() - 0.4) < 1e-12
    (g,) = torch.autograd.grad(obj, logp)
    # d/dlogp of r A is r A where unclipped, 0 where the clipped term is taken
    want_g = torch.tensor([[1.1, 0.0, 1.0, -1.5, 0.0]], dtype=torch.float64) / 5
    assert (g - want_g).abs().max().item() < 1e-12


@pytest.mark.parametrize("eps", [0.0, -0.1])
def test_clipped_surrogate_bad_eps(eps):
    z = torch.zeros(1, 3)
    with pytest.raises(ValueError):
        rlhf.clipped_surrogate(z, z, z, eps)
    with pytest.raises(ValueError):
        rlhf.PPOConfig(clip_eps=eps)


def test_config_bad_values():
    with pytest.raises(ValueError):
        rlhf.PPOConfig(beta=-0.01)
    with pytest.raises(ValueError):
        rlhf.PPOConfig(n_new=0)
    with pytest.raises(ValueError):
        rlhf.PPO(_tiny(), rlhf.RewardModel(_tiny()), cfg={"beta": 0.1})


def test_response_logprobs_and_kl_to_reference():
    m, other = _tiny(seed=0), _tiny(seed=1)
    ids = torch.randint(0, 5, (3, 10))
    lp, full = rlhf.response_logprobs(m, ids, 4, full=True)
    assert lp.shape == (3, 6) and full.shape == (3, 6, 5)
    logits, _ = m(ids)
    want = torch.log_softmax(logits, -1)[torch.arange(3)[:, None], torch.arange(3, 9), ids[:, 4:]]
    assert (lp - want).abs().max().item() < 1e-6
    assert rlhf.kl_to_reference(m, m, ids, 4).abs().max().item() < 1e-6
    assert (rlhf.kl_to_reference(m, other, ids, 4) > 0).all()
    with pytest.raises(ValueError):
        rlhf.response_logprobs(m, ids, 10)


def test_rollout_cached_equals_uncached_and_bad_length():
    m = _tiny()
    prompts = torch.randint(0, 5, (4, 6))
    a = rlhf.rollout(m, prompts, 10, generator=torch.Generator().manual_seed(0))
    b = rlhf.rollout(m, prompts, 10, use_cache=False, generator=torch.Generator().manual_seed(0))
    assert a.shape == (4, 16) and torch.equal(a, b) and torch.equal(a[:, :6], prompts)
    with pytest.raises(ValueError):
        rlhf.rollout(m, prompts, 19)  # 6 + 19 > block_size 24


def test_ppo_raises_a_toy_reward():
    """A tiny policy, rewarded for each token 3 in its response, learns to emit more of them; KL grows from 0."""
    torch.manual_seed(0)
    base = _tiny()
    ppo = rlhf.PPO(base, rlhf.RewardModel(base), rlhf.PPOConfig(n_new=8, beta=0.01, lr=3e-3, value_lr=3e-3,
                                                                  minibatch=32))
    prompts = torch.randint(0, 5, (32, 4), generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)

    def score(ids):
        return (ids[:, 4:] == 3).float().sum(1)

    first = ppo.step(prompts, score, generator=g)
    for _ in range(15):
        last = ppo.step(prompts, score, generator=g)
    assert first["kl"] == pytest.approx(0.0, abs=1e-4)
    assert last["score"] > first["score"] + 2.0 and last["kl"] > 0
    assert set(last) >= {"ids", "score", "kl", "value_loss", "clip_frac", "surrogate"}
    assert all(not p.requires_grad for p in ppo.ref.parameters())
    assert torch.equal(ppo.ref.wte.weight, base.wte.weight)  # the reference stays frozen


def test_bench_rollout_keys():
    r = rlhf.bench_rollout(batch=2, prompt_len=4, new_tokens=3, repeats=1)
    assert {"name", "ours_ms", "theirs_ms", "ratio", "cached_tok_per_s", "uncached_tok_per_s"} <= set(r)
    assert r["ours_ms"] > 0 and r["theirs_ms"] > 0 and r["ratio"] == pytest.approx(r["ours_ms"] / r["theirs_ms"])
