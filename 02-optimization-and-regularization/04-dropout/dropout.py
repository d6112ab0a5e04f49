"""Dropout from scratch (Srivastava, Hinton, Krizhevsky, Sutskever & Salakhutdinov, JMLR 2014).

"Dropout: A Simple Way to Prevent Neural Networks from Overfitting", Sec. 4 (the model): during
training each unit of a layer's output y is kept with probability p and zeroed otherwise,

    r_j ~ Bernoulli(p),   y~ = r * y,   z = W y~ + b,

a fresh mask for every training case; at test time no unit is dropped and the weights are scaled,
W_test = p W (Fig. 2), so each unit's output equals its expected output under training.

Notation clash: the paper's p is the probability of *keeping* a unit; this file, like PyTorch's
``F.dropout``, takes ``p`` as the probability of *dropping* one (keep = 1 - p). The paper's MNIST nets
keep 0.8 of the inputs and 0.5 of the hidden units, i.e. ``p=0.2`` and ``p=0.5`` here.

We implement the "inverted" form that the paper describes in Sec. 10: scale the kept activations by
1 / keep during training and leave the weights alone at test time. The trained weights are then the
paper's test-time weights p W, and test-time inference is the plain network (eval mode).

Contents:
- ``dropout`` / ``Dropout``: the Bernoulli mask and 1 / keep scaling (identity in eval mode).
- ``max_norm_``: the max-norm constraint of Sec. 5.1 (each unit's incoming weight vector projected
  onto the ball ||w||_2 <= c after an update).
- ``DropoutMLP``: a ReLU MLP with dropout on its inputs and hidden units (p = 0 gives the standard net).
- ``mc_predict`` / ``mc_error_curve`` / ``weight_scaling_predict``: Monte-Carlo model averaging
  against weight scaling (Sec. 7.5, Fig. 11).
- ``bench_dropout``: ours against ``F.dropout``, forward and backward.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.checks import check_float, check_int, check_probability, check_tensor


def dropout(x, p, training=True, generator=None):
    """Inverted dropout of Sec. 4 / Sec. 10: zero each entry of x with probability p, scale the rest by 1 / (1 - p).

    x: a floating tensor of any shape; p: the drop probability in [0, 1) (the paper's retention
    probability is 1 - p); generator: an optional ``torch.Generator`` (on x's device) for the mask.
    With ``training=False`` or p = 0, x is returned unchanged: E[output] = x, so the test-time net
    needs no weight scaling. The gradient with respect to x is the same mask times 1 / (1 - p).
    """
    check_tensor("dropout input", x, floating=True, nonempty=False)
    p = check_probability("dropout p (probability of dropping a unit)", p)
    if not training or p == 0.0:
        return x
    keep = 1.0 - p
    r = torch.empty_like(x).bernoulli_(keep, generator=generator)  # r_j ~ Bernoulli(keep), same shape as x
    return x * r.div_(keep)  # y~ = r * y / keep: one mask tensor, used again by autograd for the backward


class Dropout(nn.Module):
    """``dropout`` as a layer: active in ``train()`` mode, the identity in ``eval()`` mode.

    ``p`` is the drop probability in [0, 1) (``nn.Dropout``'s convention; the paper's p is 1 - p).
    """

    def __init__(self, p=0.5):
        super().__init__()
        self.p = check_probability("dropout p (probability of dropping a unit)", p)

    def forward(self, x):
        """x (any shape) with entries dropped and rescaled in training mode, x itself in eval mode."""
        return dropout(x, self.p, self.training)

    def extra_repr(self):
        """Shown inside ``repr(layer)``: the drop probability."""
        return f"p={self.p}"


@torch.no_grad()
def max_norm_(weight, c):
    """Max-norm constraint (Sec. 5.1, App. A.3), in place: every unit's incoming weight vector gets ||w||_2 <= c.

    weight (out, in) is a Linear weight (or (out, in, ...) for a conv): row i holds the weights into
    unit i. Rows with norm above c are scaled down onto the sphere of radius c (the projection onto
    the ball); the others are untouched. Returns ``weight``. Matches ``torch.renorm(weight, 2, 0, c)``
    up to the 1e-7 that PyTorch adds to the norm.
    """
    check_tensor("weight (out_features, in_features, ...)", weight, dim=tuple(range(2, 6)), floating=True)
    c = check_float("max-norm bound c", c, low=0.0, low_open=True)
    norms = weight.flatten(1).norm(dim=1)  # (out,)
    factor = (c / norms).clamp(max=1.0)  # 1 for rows inside the ball; a zero row gives inf -> 1
    weight.mul_(factor.view(-1, *[1] * (weight.dim() - 1)))
    return weight


class DropoutMLP(nn.Module):
    """A ReLU MLP with dropout: in_features -> hidden[0] -> ... -> hidden[-1] -> num_classes (Sec. 4, Fig. 3b).

    Dropout with probability ``p_input`` is applied to the input and ``p_hidden`` to every hidden
    layer's output (the paper's MNIST nets: keep 0.8 and 0.5, i.e. p_input=0.2, p_hidden=0.5).
    With both 0 it is the standard net. Linear layers keep PyTorch's default initialisation.
    ``forward(x)`` takes x (B, ...) flattened to (B, in_features) and returns logits (B, num_classes).
    """

    def __init__(self, in_features=784, hidden=(1024, 1024), num_classes=10, p_input=0.2, p_hidden=0.5):
        super().__init__()
        check_int("in_features", in_features, low=1)
        check_int("num_classes", num_classes, low=2)
        if not isinstance(hidden, (tuple, list)) or not hidden:
            raise ValueError(f"hidden must be a non-empty list of layer widths, got {hidden!r}")
        hidden = [check_int(f"hidden[{i}]", h, low=1) for i, h in enumerate(hidden)]
        self.p_input = check_probability("p_input (probability of dropping an input)", p_input)
        self.p_hidden = check_probability("p_hidden (probability of dropping a hidden unit)", p_hidden)
        sizes = [in_features, *hidden, num_classes]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        # drop probability of each layer's *input*: the pixels for the first layer, hidden units after
        self.drops = nn.ModuleList([Dropout(self.p_input)] + [Dropout(self.p_hidden) for _ in hidden])

    def forward(self, x):
        """Logits (B, num_classes); dropout masks are sampled only in training mode."""
        check_tensor("DropoutMLP input", x, floating=True)
        h = x.flatten(1)  # (B, in_features)
        if h.shape[1] != self.layers[0].in_features:
            raise ValueError(f"DropoutMLP expects {self.layers[0].in_features} input features, got {h.shape[1]}")
        for i, (drop, layer) in enumerate(zip(self.drops, self.layers)):
            h = layer(drop(h))  # z = W (r * y) / keep + b
            if i < len(self.layers) - 1:
                h = F.relu(h)  # (B, hidden[i])
        return h

    def max_norm_(self, c):
        """Apply ``max_norm_`` to every layer, with c in the paper's units (its non-inverted weights).

        The paper bounds the weights W it trains with unscaled masks; inverted dropout trains
        keep * W instead (the test-time weights, Fig. 2). So a layer whose input is kept with
        probability keep gets the bound keep * c here: the paper's constraint, exactly. For the
        standard net (p = 0) the bound is c. Returns the list of bounds used, first layer first.
        """
        c = check_float("max-norm bound c", c, low=0.0, low_open=True)
        bounds = []
        for drop, layer in zip(self.drops, self.layers):
            bounds.append(c * (1.0 - drop.p))
            max_norm_(layer.weight, bounds[-1])
        return bounds


@torch.no_grad()
def mc_predict(model, x, samples, batch_size=2000):
    """Monte-Carlo model averaging (Sec. 7.5): the mean softmax output of ``samples`` dropout-thinned nets.

    The model is put in training mode so each of its ``Dropout`` layers samples a fresh mask per
    pass (and restored afterwards); it must hold no other train-mode behaviour (e.g. batch norm).
    x (N, ...) -> probabilities (N, num_classes), averaged over the passes.
    """
    check_tensor("inputs", x, floating=True)
    samples = check_int("samples", samples, low=1)
    batch_size = check_int("batch_size", batch_size, low=1)
    return mc_probs(model, x, [samples], batch_size)[0]


@torch.no_grad()
def mc_probs(model, x, ks, batch_size=2000):
    """Monte-Carlo averages after each number of passes in ``ks`` (increasing), from one run of max(ks) passes.

    Returns a list of (N, num_classes) tensors, entry j the mean softmax over the first ks[j] passes:
    the running averages of one sequence of thinned nets, as in Fig. 11.
    """
    check_tensor("inputs", x, floating=True)
    ks = [check_int("k", k, low=1) for k in ks]
    if not ks or ks != sorted(set(ks)):
        raise ValueError(f"ks must be a non-empty increasing list of sample counts, got {ks}")
    check_int("batch_size", batch_size, low=1)
    was_training = model.training
    model.train()
    dev = next(model.parameters()).device
    out = [[] for _ in ks]
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size].to(dev)
        total, j = 0.0, 0
        for k in range(1, ks[-1] + 1):
            total = total + model(xb).softmax(-1)  # (B, K)
            if k == ks[j]:
                out[j].append(total / k)
                j += 1
    model.train(was_training)
    return [torch.cat(o) for o in out]


@torch.no_grad()
def weight_scaling_predict(model, x, batch_size=2000):
    """Softmax output of the single unthinned net (eval mode): the paper's weight-scaling rule (Fig. 2).

    With inverted dropout the weights already are the paper's p W, so "scaling the weights" is just
    switching dropout off. x (N, ...) -> probabilities (N, num_classes). The model's mode is restored.
    """
    check_tensor("inputs", x, floating=True)
    check_int("batch_size", batch_size, low=1)
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    probs = torch.cat([model(x[i:i + batch_size].to(dev)).softmax(-1) for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return probs


def mc_error_curve(model, x, y, ks, batch_size=2000):
    """Test error (%) of the Monte-Carlo average after k passes, for each k in ``ks``: {k: error}.

    x (N, ...), y (N,) integer labels. One sequence of max(ks) passes serves every k (see ``mc_probs``).
    """
    check_tensor("labels", y, dim=1, integer=True)
    if len(y) != len(x):
        raise ValueError(f"expected one label per input: {len(x)} inputs, {len(y)} labels")
    y = y.to(next(model.parameters()).device)
    probs = mc_probs(model, x, ks, batch_size)
    return {k: 100.0 * (p.argmax(1) != y).float().mean().item() for k, p in zip(ks, probs)}


def bench_dropout(device="cpu", repeats=20, shape=(256, 1024), p=0.5):
    """Forward + backward time of ``dropout`` (this file) vs ``F.dropout`` on one tensor of ``shape``.

    Returns {"ours_ms", "theirs_ms", "ratio", "name"}: medians over ``repeats`` runs after 3 warm-ups,
    alternating the two sides (:func:`common.bench.time_forward_backward`), ratio = ours / theirs. Ours is built from separate tensor ops: it allocates a float mask, fills it
    (bernoulli_), divides it by keep and multiplies, each a kernel of its own, and the backward is one
    more multiply by that saved mask. On the CPU ``F.dropout`` takes the same unfused path (PyTorch
    fuses only on CUDA-like devices), so the ratio there is about 1; on CUDA it calls the fused
    ``native_dropout`` kernel, which draws the mask and scales in one pass and saves a boolean mask,
    so ours should be the slower one there.
    """
    from common.bench import time_forward_backward

    check_int("repeats", repeats, low=1)
    p = check_probability("p", p)
    device = torch.device(device)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(device)
    ours, theirs = time_forward_backward(lambda t: dropout(t, p, training=True),
                                         lambda t: F.dropout(t, p, training=True), x, device=device,
                                         repeats=repeats)
    return {"ours_ms": ours, "theirs_ms": theirs, "ratio": ours / theirs,
            "name": f"dropout p={p} forward+backward, {tuple(shape)}"}
