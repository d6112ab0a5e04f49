"""Tests for 02-optimization-and-regularization/08-adam/adam.py (Kingma & Ba 2014)."""

import copy
import math

import pytest
import torch

import common

adam = common.topic("adam")

# (lr, betas, eps, weight_decay): several rates, betas, epsilons and decays
SETTINGS = [
    (1e-3, (0.9, 0.999), 1e-8, 0.0),
    (3e-2, (0.9, 0.999), 1e-8, 0.1),
    (1e-2, (0.0, 0.99), 1e-3, 0.0),
    (3e-2, (0.5, 0.9999), 1e-8, 1e-2),
    (1e-3, (0.99, 0.9), 1e-6, 0.1),
]


def _trajectory(opt_cls, steps=100, dtype=torch.float64, scale=1.0, schedule=None, **kwargs):
    """Every weight after every step (steps, n_params) of a small net on a fixed batch from fixed weights."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 5, generator=g, dtype=dtype)
    y = torch.randn(32, 3, generator=g, dtype=dtype)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).to(dtype)
    opt = opt_cls(net.parameters(), **kwargs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule) if schedule else None
    out = []
    for _ in range(steps):
        opt.zero_grad()
        (scale * torch.nn.functional.mse_loss(net(x), y)).backward()
        opt.step()
        if sched:
            sched.step()
        out.append(torch.cat([p.detach().flatten().clone() for p in net.parameters()]))
    return torch.stack(out)


def _max_diff(a, b):
    return (a - b).abs().max().item()


class _PaperAdam(torch.optim.Optimizer):
    """Algorithm 1 written literally (m^ and v^ formed explicitly), with the same flags, as an independent reference."""

    def __init__(self, params, lr, betas, eps, weight_decay=0.0, decoupled=False, amsgrad=False, bias_correction=True):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, wd=weight_decay, dec=decoupled, ams=amsgrad,
                                      bc=bias_correction))

    @torch.no_grad()
    def step(self):
        for gr in self.param_groups:
            b1, b2 = gr["betas"]
            for p in gr["params"]:
                s = self.state[p]
                if not s:
                    s.update(t=0, m=torch.zeros_like(p), v=torch.zeros_like(p), vmax=torch.zeros_like(p))
                s["t"] += 1
                g = p.grad.clone()
                if gr["dec"]:
                    p.copy_(p * (1 - gr["lr"] * gr["wd"]))
                else:
                    g = g + gr["wd"] * p
                s["m"] = b1 * s["m"] + (1 - b1) * g
                s["v"] = b2 * s["v"] + (1 - b2) * g * g
                s["vmax"] = torch.maximum(s["vmax"], s["v"])
                v = s["vmax"] if gr["ams"] else s["v"]
                m_hat = s["m"] / (1 - b1 ** s["t"]) if gr["bc"] else s["m"]
                v_hat = v / (1 - b2 ** s["t"]) if gr["bc"] else v
                p.copy_(p - gr["lr"] * m_hat / (v_hat.sqrt() + gr["eps"]))


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("setting", SETTINGS)
def test_trajectory_matches_torch_adam_and_adamw_over_100_steps(setting, decoupled, amsgrad):
    lr, betas, eps, wd = setting
    hyper = dict(lr=lr, betas=betas, eps=eps, weight_decay=wd, amsgrad=amsgrad)
    ours = _trajectory(adam.Adam, decoupled=decoupled, **hyper)
    ref = _trajectory(torch.optim.AdamW if decoupled else torch.optim.Adam, **hyper)
    assert _max_diff(ours, ref) <= 1e-10


@pytest.mark.parametrize("amsgrad", [False, True])
def test_float32_trajectory_matches_torch(amsgrad):
    ours = _trajectory(adam.Adam, dtype=torch.float32, lr=1e-2, amsgrad=amsgrad)
    ref = _trajectory(torch.optim.Adam, dtype=torch.float32, lr=1e-2, amsgrad=amsgrad)
    assert _max_diff(ours, ref) <= 1e-5


def test_defaults_are_the_papers_and_torchs():
    opt = adam.Adam([torch.zeros(2, requires_grad=True)])
    d = opt.defaults
    assert (d["lr"], d["betas"], d["eps"], d["weight_decay"]) == (1e-3, (0.9, 0.999), 1e-8, 0.0)
    assert not d["decoupled"] and not d["amsgrad"] and d["bias_correction"]
    assert _max_diff(_trajectory(adam.Adam), _trajectory(torch.optim.Adam)) <= 1e-12


@pytest.mark.parametrize("bias_correction", [True, False])
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("decoupled", [False, True])
def test_every_flag_combination_matches_algorithm_1_written_literally(bias_correction, amsgrad, decoupled):
    hyper = dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-8, weight_decay=0.05, decoupled=decoupled, amsgrad=amsgrad,
                 bias_correction=bias_correction)
    assert _max_diff(_trajectory(adam.Adam, **hyper), _trajectory(_PaperAdam, **hyper)) <= 1e-10


def test_l2_and_decoupled_decay_are_different_methods():
    l2 = _trajectory(adam.Adam, lr=1e-2, weight_decay=0.1)
    dec = _trajectory(adam.Adam, lr=1e-2, weight_decay=0.1, decoupled=True)
    assert _max_diff(l2, dec) > 1e-3


def test_no_bias_correction_with_beta1_zero_is_rmsprop():
    ours = _trajectory(adam.Adam, lr=1e-2, betas=(0.0, 0.99), bias_correction=False)
    ref = _trajectory(torch.optim.RMSprop, lr=1e-2, alpha=0.99, eps=1e-8)
    assert _max_diff(ours, ref) <= 1e-12


def test_beta2_to_one_with_sqrt_t_decay_is_adagrad():
    # Sec. 5: beta1 = 0, beta2 -> 1, alpha_t = alpha / sqrt(t) gives theta - alpha g / sqrt(sum g^2)
    ours = _trajectory(adam.Adam, lr=0.1, betas=(0.0, 1 - 1e-9), eps=1e-10, schedule=lambda s: (s + 1) ** -0.5)
    ref = _trajectory(torch.optim.Adagrad, lr=0.1, eps=1e-10)
    assert _max_diff(ours, ref) <= 1e-6
    far = _trajectory(adam.Adam, lr=0.1, betas=(0.0, 0.9), eps=1e-10, schedule=lambda s: (s + 1) ** -0.5)
    assert _max_diff(far, ref) > 1e-3  # a short average is not AdaGrad


def test_update_is_invariant_to_gradient_scale():
    one = _trajectory(adam.Adam, lr=1e-2, eps=1e-12)
    big = _trajectory(adam.Adam, lr=1e-2, eps=1e-12, scale=1000.0)
    assert _max_diff(one, big) <= 1e-8


def _steps_for_gradients(grads, **kwargs):
    """Apply the given gradient sequence (T, n) to a parameter; return the steps theta_t - theta_{t-1} (T, n)."""
    w = torch.zeros(grads.shape[1], dtype=torch.float64, requires_grad=True)
    opt = adam.Adam([w], **kwargs)
    out, prev = [], w.detach().clone()
    for g in grads:
        w.grad = g.clone()
        opt.step()
        out.append(w.detach() - prev)
        prev = w.detach().clone()
    return torch.stack(out)


def test_first_step_is_alpha_with_correction_and_larger_without():
    g = torch.tensor([[3.0, -0.02, 1e3]], dtype=torch.float64)
    corrected = _steps_for_gradients(g, lr=1e-3, betas=(0.9, 0.9999), eps=1e-12)
    uncorrected = _steps_for_gradients(g, lr=1e-3, betas=(0.9, 0.9999), eps=1e-12, bias_correction=False)
    assert torch.allclose(corrected, -1e-3 * g.sign(), rtol=1e-8, atol=0)
    assert torch.allclose(uncorrected, -1e-3 * 0.1 / 0.0001 ** 0.5 * g.sign(), rtol=1e-8, atol=0)


def test_uncorrected_over_corrected_step_is_bias_factor():
    # a constant gradient: m_t = g (1 - b1^t), v_t = g^2 (1 - b2^t), so the corrected step is exactly alpha
    grads = torch.full((50, 1), 0.7, dtype=torch.float64)
    kw = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-30)
    corrected = _steps_for_gradients(grads, **kw)[:, 0]
    uncorrected = _steps_for_gradients(grads, bias_correction=False, **kw)[:, 0]
    assert torch.allclose(corrected, torch.full_like(corrected, -1e-3), rtol=1e-10, atol=0)
    assert torch.allclose(uncorrected / corrected, adam.bias_factor(torch.arange(1, 51), (0.9, 0.999)), rtol=1e-10)


@pytest.mark.parametrize("betas", [(0.9, 0.99), (0.9, 0.999)])
def test_lone_spike_and_growing_gradients_against_the_bounds_of_section_2_1(betas):
    # Sec. 2.1: |step| <= alpha (1 - b1) / sqrt(1 - b2) if (1 - b1) > sqrt(1 - b2), else <= alpha.
    b1, b2 = betas
    paper_bound = max(1.0, (1 - b1) / (1 - b2) ** 0.5)
    # the "most severe case of sparsity": zero gradients, then one spike at step t
    t = 2000
    grads = torch.zeros(t, 1, dtype=torch.float64)
    grads[-1] = 5.0
    spike = _steps_for_gradients(grads, lr=1.0, betas=betas, eps=1e-300)[-1, 0].abs().item()
    assert spike == pytest.approx((1 - b1) / (1 - b2) ** 0.5 * (1 - b2 ** t) ** 0.5 / (1 - b1 ** t), rel=1e-9)
    assert spike <= paper_bound * (1 + 1e-9)
    # not a strict bound for every sequence: a gradient growing by b2 / b1 per step exceeds it (Cauchy-Schwarz
    # gives the sharp limit sqrt((1 - b1)^2 / ((1 - b2) (1 - b1^2 / b2))))
    growing = torch.tensor([(b2 / b1) ** i for i in range(400)], dtype=torch.float64)[:, None]
    steps = _steps_for_gradients(growing, lr=1.0, betas=betas, eps=1e-300).abs()
    sharp = ((1 - b1) ** 2 / ((1 - b2) * (1 - b1 ** 2 / b2))) ** 0.5
    assert paper_bound < steps.max().item() <= sharp * (1 + 1e-9)


def test_bias_factor_values():
    f = adam.bias_factor(torch.tensor([1, 10, 100_000]), (0.9, 0.9999))
    assert f.shape == (3,) and f.dtype == torch.float64
    assert f[0].item() == pytest.approx(0.1 / 0.01)
    assert f[1].item() == pytest.approx((1 - 0.9 ** 10) / (1 - 0.9999 ** 10) ** 0.5)
    assert f[2].item() == pytest.approx(1.0, abs=1e-4)
    assert adam.bias_factor(1, (0.0, 0.99)).item() == pytest.approx(10.0)


def test_closure_lr_zero_and_parameters_without_gradient():
    w = torch.ones(3, requires_grad=True)
    frozen = torch.ones(2, requires_grad=True)
    opt = adam.Adam([w, frozen], lr=0.0)

    def closure():
        opt.zero_grad()
        loss = (w ** 2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == pytest.approx(3.0)
    assert torch.equal(w.detach(), torch.ones(3)) and frozen.grad is None and frozen not in opt.state


def test_state_dict_resume_equals_uninterrupted_run():
    torch.manual_seed(0)
    net = torch.nn.Linear(5, 3).double()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 5, generator=g, dtype=torch.float64), torch.randn(16, 3, generator=g, dtype=torch.float64)

    def run(opt, n):
        for _ in range(n):
            opt.zero_grad()
            torch.nn.functional.mse_loss(net(x), y).backward()
            opt.step()

    opt = adam.Adam(net.parameters(), lr=1e-2, amsgrad=True)
    run(opt, 10)
    saved = copy.deepcopy(opt.state_dict())  # state_dict() shares the state tensors
    after_10 = [p.detach().clone() for p in net.parameters()]
    run(opt, 10)
    straight = [p.detach().clone() for p in net.parameters()]
    with torch.no_grad():
        for p, q in zip(net.parameters(), after_10):
            p.copy_(q)
    opt2 = adam.Adam(net.parameters(), lr=1e-2, amsgrad=True)
    opt2.load_state_dict(saved)
    run(opt2, 10)
    assert all(torch.equal(a, p.detach()) for a, p in zip(straight, net.parameters()))


def test_learning_sanity_logistic_regression_fits_separable_data():
    common.seed_everything(0)
    x = torch.randn(64, 20)
    y = (x[:, :3].sum(1) > 0).long() + 2 * (x[:, 3] > 0).long()  # 4 classes, linearly separable
    model = adam.make_model("logreg", in_features=20, num_classes=4)
    opt = adam.make_optimizer("adam", model.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    assert loss.item() < 0.1
    assert (model(x).argmax(1) == y).all()


def test_make_model_shapes_and_parts():
    logreg = adam.make_model("logreg")
    assert logreg(torch.zeros(5, 1, 28, 28)).shape == (5, 10)
    mlp = adam.make_model("mlp")
    assert sum(p.numel() for p in mlp.parameters()) == 784 * 1000 + 1000 + 1000 * 1000 + 1000 + 1000 * 10 + 10
    assert sum(isinstance(m, torch.nn.Dropout) for m in mlp.modules()) == 2
    assert mlp(torch.zeros(3, 784)).shape == (3, 10)
    small = adam.make_model("mlp", in_features=6, num_classes=3, hidden=(4,), dropout=0.0)
    assert not any(isinstance(m, torch.nn.Dropout) for m in small.modules())
    assert small(torch.zeros(2, 6)).shape == (2, 3)


def test_make_optimizer_builds_the_four_methods():
    p = [torch.zeros(3, requires_grad=True)]
    assert isinstance(adam.make_optimizer("adam", p, 1e-3, amsgrad=True), adam.Adam)
    sgd = adam.make_optimizer("sgd_nesterov", p, 0.1, weight_decay=1e-4)
    assert isinstance(sgd, torch.optim.SGD)
    d = sgd.defaults
    assert d["nesterov"] and d["momentum"] == 0.9 and d["weight_decay"] == 1e-4
    assert isinstance(adam.make_optimizer("adagrad", p, 0.01), torch.optim.Adagrad)
    rms = adam.make_optimizer("rmsprop", p, 1e-3)
    assert isinstance(rms, torch.optim.RMSprop) and rms.defaults["alpha"] == 0.99
    assert set(adam.OPTIMIZERS) == {"adam", "sgd_nesterov", "adagrad", "rmsprop"}


def test_bad_hyper_parameters_raise_value_error():
    p = [torch.zeros(3, requires_grad=True)]
    with pytest.raises(ValueError, match="lr must be >= 0"):
        adam.Adam(p, lr=-1e-3)
    for eps in (0.0, -1e-8):
        with pytest.raises(ValueError, match="eps must be > 0"):
            adam.Adam(p, eps=eps)
    for betas in ((1.0, 0.999), (0.9, 1.0), (-0.1, 0.999), (0.9, float("nan"))):
        with pytest.raises(ValueError, match=r"must be a number in \[0, 1\)"):
            adam.Adam(p, betas=betas)
    for betas in ((0.9,), 0.9, "ab", (0.9, 0.99, 0.999)):
        with pytest.raises(ValueError, match="betas must be a pair"):
            adam.Adam(p, betas=betas)
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        adam.Adam(p, weight_decay=-0.1)
    for flag in ("decoupled", "amsgrad", "bias_correction"):
        with pytest.raises(ValueError, match=f"{flag} must be a bool"):
            adam.Adam(p, **{flag: 1})
    assert adam.Adam(p, lr=0.0).defaults["lr"] == 0.0  # lr = 0 is allowed (nothing moves)


def test_sparse_gradient_raises_value_error():
    w = torch.zeros(4, requires_grad=True)
    w.grad = torch.zeros(4).to_sparse()
    with pytest.raises(ValueError, match="sparse gradient"):
        adam.Adam([w]).step()


def test_bad_model_optimizer_and_step_arguments_raise_value_error():
    p = [torch.zeros(3, requires_grad=True)]
    with pytest.raises(ValueError, match="kind"):
        adam.make_model("cnn")
    with pytest.raises(ValueError, match="hidden"):
        adam.make_model("mlp", hidden=())
    with pytest.raises(ValueError, match="dropout"):
        adam.make_model("mlp", dropout=1.0)
    with pytest.raises(ValueError, match="in_features"):
        adam.make_model("logreg", in_features=0)
    with pytest.raises(ValueError, match="optimizer name"):
        adam.make_optimizer("adadelta", p, 1.0)
    with pytest.raises(ValueError, match="only apply to 'adam'"):
        adam.make_optimizer("rmsprop", p, 1e-3, amsgrad=True)
    with pytest.raises(ValueError, match="lr must be >= 0"):
        adam.make_optimizer("adagrad", p, -0.1)
    for t in (0, 1.5, torch.tensor([1, 0]), torch.tensor([1.0])):
        with pytest.raises(ValueError, match="integer step"):
            adam.bias_factor(t)
    with pytest.raises(ValueError, match="beta2"):
        adam.bias_factor(3, (0.9, 1.0))
    with pytest.raises(ValueError, match="repeats"):
        adam.bench_adam_step(repeats=0)


def test_bench_adam_step_returns_times():
    r = adam.bench_adam_step(repeats=1, sizes=((4, 3), (3,)))
    assert {"ours_ms", "theirs_ms", "fused_ms", "ratio", "name"} == set(r)
    assert r["ours_ms"] > 0 and r["theirs_ms"] > 0 and (r["fused_ms"] is None or r["fused_ms"] > 0)
    assert r["ratio"] == pytest.approx(r["ours_ms"] / r["theirs_ms"])
    assert math.isfinite(r["ratio"]) and "15 parameters" in r["name"]
