"""Backpropagation from scratch (Rumelhart, Hinton & Williams, 1986).

Three layers of the same idea, each checked against ``torch.autograd`` in the tests:

* ``Value``: a scalar reverse-mode autodiff engine. Every operation records its inputs and
  its local derivative; ``backward()`` applies the chain rule in reverse topological order.
* ``MLP``: a network of semilinear units built from ``Value`` nodes (PDP ch. 8, sec. "The
  generalized delta rule").
* ``TensorMLP``: the same network with the forward and backward passes written out by hand
  in matrix form (the Nature letter's eqs. 1-7), no autograd.

Equation numbers refer to the Nature letter "Learning representations by back-propagating
errors" (1986): (1) x_j = sum_i y_i w_ji, (2) y_j = 1 / (1 + e^-x_j),
(3) E = 1/2 sum_c sum_j (y_jc - d_jc)^2, (4) dE/dy_j = y_j - d_j, (5) dE/dx_j = dE/dy_j y_j (1 - y_j),
(6) dE/dw_ji = dE/dx_j y_i, (7) dE/dy_i = sum_j dE/dx_j w_ji, (8) dw = -eps dE/dw,
(9) dw(t) = -eps dE/dw(t) + alpha dw(t-1).
"""

from __future__ import annotations

import math
import numbers
import random

import torch

from common.checks import check_choice, check_float, check_int, check_labels, check_same_length, check_tensor

# name: (f, f' written in terms of the unit's output y = f(x)), for the tensor network
_ACT = {"sigmoid": (torch.sigmoid, lambda y: y * (1 - y)), "tanh": (torch.tanh, lambda y: 1 - y * y),
        "relu": (torch.relu, lambda y: (y > 0).to(y.dtype)), "linear": (lambda z: z, torch.ones_like)}
ACTIVATIONS = tuple(_ACT)


class Value:
    """A scalar that remembers how it was computed, so gradients can flow back through it.

    Each node stores its parents together with its local derivative d(node)/d(parent);
    ``backward()`` then needs nothing but the chain rule. After ``E.backward()``, ``grad``
    holds dE/d(node).
    """

    __slots__ = ("data", "grad", "_parents", "op")

    def __init__(self, data, _parents: tuple = (), op: str = ""):
        if isinstance(data, bool) or not isinstance(data, numbers.Real):
            raise ValueError(f"Value expects a real number, got {type(data).__name__}: {data!r}")
        self.data, self.grad, self._parents, self.op = float(data), 0.0, _parents, op

    def __repr__(self) -> str:
        return f"Value(data={self.data:.6g}, grad={self.grad:.6g})"

    @staticmethod
    def _lift(other) -> Value:
        return other if isinstance(other, Value) else Value(other)

    def __add__(self, other) -> Value:
        other = self._lift(other)
        return Value(self.data + other.data, ((self, 1.0), (other, 1.0)), "+")

    def __mul__(self, other) -> Value:
        other = self._lift(other)
        return Value(self.data * other.data, ((self, other.data), (other, self.data)), "*")

    def __pow__(self, k) -> Value:
        if isinstance(k, (Value, bool)) or not isinstance(k, numbers.Real):
            raise ValueError(f"Value ** k needs a constant real exponent, got {type(k).__name__}")
        if self.data == 0 and k < 1:
            raise ValueError(f"0 ** {k} has no derivative; expected a non-zero base")
        return Value(self.data**k, ((self, k * self.data ** (k - 1)),), f"**{k}")

    def __neg__(self) -> Value:
        return self * -1.0

    def __sub__(self, other) -> Value:
        return self + (-self._lift(other))

    def __truediv__(self, other) -> Value:
        return self * self._lift(other) ** -1

    __radd__, __rmul__ = __add__, __mul__

    def __rsub__(self, other) -> Value:
        return self._lift(other) - self

    def __rtruediv__(self, other) -> Value:
        return self._lift(other) / self

    def exp(self) -> Value:
        """e^x, whose derivative is itself."""
        e = math.exp(self.data)
        return Value(e, ((self, e),), "exp")

    def log(self) -> Value:
        """Natural log (x > 0), derivative 1/x."""
        if self.data <= 0:
            raise ValueError(f"log needs a positive argument, got {self.data}")
        return Value(math.log(self.data), ((self, 1.0 / self.data),), "log")

    def tanh(self) -> Value:
        """tanh(x), derivative 1 - tanh(x)^2."""
        t = math.tanh(self.data)
        return Value(t, ((self, 1.0 - t * t),), "tanh")

    def sigmoid(self) -> Value:
        """The logistic unit of eq. 2; its derivative is y (1 - y) (eq. 5)."""
        x = self.data
        s = 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))
        return Value(s, ((self, s * (1.0 - s)),), "sigmoid")

    def relu(self) -> Value:
        """max(x, 0), derivative 1 for x > 0 else 0."""
        return Value(max(self.data, 0.0), ((self, float(self.data > 0)),), "relu")

    def backward(self) -> None:
        """Set d(self)/d(self) = 1 and apply the chain rule to every ancestor, children first.

        Gradients accumulate (``+=``), as a node used twice must collect both contributions;
        zero the leaves' ``grad`` before calling it again on a new graph over the same leaves.
        """
        order, seen, stack = [], set(), [(self, False)]
        while stack:  # iterative depth-first search: deep graphs do not hit the recursion limit
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
            elif node not in seen:
                seen.add(node)
                stack.append((node, True))
                stack.extend((p, False) for p, _ in node._parents if p not in seen)
        self.grad = 1.0
        for node in reversed(order):  # reverse topological order: a node's grad is final here
            for parent, local in node._parents:
                parent.grad += local * node.grad


def _layer_sizes(name: str, sizes, at_least: int) -> list[int]:
    """A list of ``at_least`` or more positive ints (layer widths)."""
    sizes = list(sizes)
    if len(sizes) < at_least:
        raise ValueError(f"{name} needs at least {at_least} layer size(s), got {sizes}")
    return [check_int(f"{name}[{i}]", s, low=1) for i, s in enumerate(sizes)]


class Neuron:
    """One unit: y = f(sum_i w_i x_i + b) (eqs. 1-2; the bias is the PDP chapter's threshold)."""

    def __init__(self, n_in: int, act: str = "sigmoid", init_range: float = 0.3, rng=None):
        check_int("n_in", n_in, low=1)
        self.act = check_choice("activation", act, ACTIVATIONS)
        init_range = check_float("init_range", init_range, 0.0, low_open=True)
        rng = rng or random.Random(0)
        self.w = [Value(rng.uniform(-init_range, init_range)) for _ in range(n_in)]
        self.b = Value(rng.uniform(-init_range, init_range))

    def __call__(self, x) -> Value:
        s = self.b
        for wi, xi in zip(self.w, x):
            s = s + wi * xi
        return s if self.act == "linear" else getattr(s, self.act)()

    def parameters(self) -> list[Value]:
        """The weights, then the bias."""
        return self.w + [self.b]


class Layer:
    """``n_out`` neurons that all read the same ``n_in`` inputs."""

    def __init__(self, n_in: int, n_out: int, act: str = "sigmoid", init_range: float = 0.3, rng=None):
        self.neurons = [Neuron(n_in, act, init_range, rng) for _ in range(n_out)]

    def __call__(self, x) -> list[Value]:
        return [n(x) for n in self.neurons]

    def parameters(self) -> list[Value]:
        """Every neuron's parameters, neuron by neuron."""
        return [p for n in self.neurons for p in n.parameters()]


class MLP:
    """A feed-forward net of ``Value`` units: ``MLP(2, [2, 1])`` is the 2-2-1 XOR net.

    ``act`` is used by every layer (the paper's nets are logistic throughout). With
    ``bypass=True`` (one hidden layer only) the output units also see the raw inputs, as in
    the PDP chapter's XOR net with one hidden unit and direct input-output connections.
    Weights and biases start uniform in [-init_range, init_range] (Nature, Fig. 1 caption).
    """

    def __init__(self, n_in: int, sizes, act: str = "sigmoid", init_range: float = 0.3,
                 seed: int = 0, bypass: bool = False):
        self.n_in = check_int("n_in", n_in, low=1)
        self.sizes = _layer_sizes("sizes", sizes, 1)
        check_choice("activation", act, ACTIVATIONS)
        check_float("init_range", init_range, 0.0, low_open=True)
        check_int("seed", seed)
        if bypass and len(self.sizes) != 2:
            raise ValueError(f"bypass needs exactly one hidden layer, got sizes {self.sizes}")
        rng, fan_in, self.bypass, self.layers = random.Random(seed), n_in, bypass, []
        for i, n_out in enumerate(self.sizes):
            extra = n_in if bypass and i == 1 else 0
            self.layers.append(Layer(fan_in + extra, n_out, act, init_range, rng))
            fan_in = n_out

    def __call__(self, x) -> list[Value]:
        x = list(x)
        if len(x) != self.n_in:
            raise ValueError(f"MLP expects {self.n_in} inputs, got {len(x)}")
        h = x
        for i, layer in enumerate(self.layers):
            h = layer(h + x if self.bypass and i == 1 else h)
        return h

    def parameters(self) -> list[Value]:
        """Every layer's parameters, input side first (the order of ``loss_and_grads``' grads)."""
        return [p for layer in self.layers for p in layer.parameters()]

    def weights(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The weights as float64 ``(W (n_out, n_in), b (n_out,))`` pairs, one per layer."""
        return [(torch.tensor([[w.data for w in n.w] for n in layer.neurons], dtype=torch.float64),
                 torch.tensor([n.b.data for n in layer.neurons], dtype=torch.float64))
                for layer in self.layers]

    def loss_and_grads(self, X, T):
        """E = 1/2 sum_p sum_j (y_pj - d_pj)^2 over all patterns (eq. 3), and dE/dparam.

        ``X`` is (P, n_in), ``T`` is (P, n_out) (tensors or nested lists). Returns
        ``(E: float, outputs: float64 tensor (P, n_out), grads: list[float])``, with grads
        in ``parameters()`` order. An empty pattern set raises ``ValueError``.
        """
        X, T = torch.as_tensor(X).tolist(), torch.as_tensor(T).tolist()
        if not X:
            raise ValueError("MLP.loss_and_grads got an empty set of patterns; expected at least one")
        if len(X) != len(T) or any(len(t) != self.sizes[-1] for t in T):
            raise ValueError(f"expected T of shape ({len(X)}, {self.sizes[-1]}), got {len(T)} rows")
        params = self.parameters()
        for p in params:
            p.grad = 0.0
        outputs, E = [], Value(0.0)
        for x, t in zip(X, T):
            y = self(x)
            outputs.append([yj.data for yj in y])
            E = E + 0.5 * sum(((yj - tj) ** 2 for yj, tj in zip(y, t)), Value(0.0))
        E.backward()
        return E.data, torch.tensor(outputs, dtype=torch.float64), [p.grad for p in params]


class TensorMLP:
    """The generalized delta rule in matrix form, forward and backward written by hand.

    ``sizes = (n_in, h_1, ..., n_out)``; hidden units use ``act``. ``out="sigmoid"`` pairs
    logistic outputs with the paper's squared error (eq. 3); ``out="softmax"`` pairs a
    softmax with cross-entropy (a later refinement, used for MNIST), computed from the
    output units' total inputs with a log-sum-exp, so it stays finite when they are far apart.
    Weights start uniform in [-r, r] with r = ``init_range`` (> 0), or 1/sqrt(fan_in) when it
    is None.

    Batches are ``(B, n_in)`` with ``B >= 1``: an empty batch raises ``ValueError`` (a mean loss
    over no cases is undefined), as do class targets outside ``[0, n_out)``.
    """

    def __init__(self, sizes, act: str = "sigmoid", out: str = "sigmoid", init_range: float | None = None,
                 seed: int = 0, dtype: torch.dtype = torch.float32, device=None):
        self.sizes = _layer_sizes("sizes", sizes, 2)
        self.act = check_choice("activation", act, ACTIVATIONS)
        self.out = check_choice("out", out, ("sigmoid", "softmax"))
        self.dtype = check_choice("dtype", dtype, (torch.float32, torch.float64))
        if init_range is not None:
            check_float("init_range", init_range, 0.0, low_open=True)
        g = torch.Generator().manual_seed(check_int("seed", seed))
        self.params = []  # [W_1, b_1, W_2, b_2, ...]; W_l is (n_out, n_in) like the paper's w_ji
        for n_in, n_out in zip(self.sizes[:-1], self.sizes[1:]):
            r = init_range if init_range is not None else n_in**-0.5
            for shape in ((n_out, n_in), (n_out,)):
                self.params.append(((torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) * r)
                                   .to(dtype=dtype, device=device))

    def parameters(self) -> list[torch.Tensor]:
        """``[W_1, b_1, W_2, b_2, ...]``, the order of ``backward``'s grads."""
        return self.params

    def set_weights(self, pairs) -> None:
        """Copy ``[(W, b), ...]`` (e.g. ``MLP.weights()``) into this net."""
        flat = [t for pair in pairs for t in pair]
        if [tuple(t.shape) for t in flat] != [tuple(p.shape) for p in self.params]:
            raise ValueError(f"expected shapes {[tuple(p.shape) for p in self.params]}, "
                             f"got {[tuple(t.shape) for t in flat]}")
        for p, t in zip(self.params, flat):
            p.copy_(t)

    def _check_x(self, x) -> None:
        check_tensor("x", x, dim=2, floating=True)  # also rejects an empty batch
        if x.shape[1] != self.sizes[0]:
            raise ValueError(f"expected x of shape (B, {self.sizes[0]}), got {tuple(x.shape)}")
        if x.dtype != self.dtype:
            raise ValueError(f"expected x of dtype {self.dtype}, got {x.dtype}")

    def _check_target(self, target, batch: int) -> torch.Tensor:
        if self.out == "sigmoid":
            if not isinstance(target, torch.Tensor) or target.shape != (batch, self.sizes[-1]) \
                    or target.dtype != self.dtype:
                got = (f"{tuple(target.shape)} {target.dtype}" if isinstance(target, torch.Tensor)
                       else type(target).__name__)
                raise ValueError(f"expected float target ({batch}, {self.sizes[-1]}) {self.dtype}, got {got}")
            return target
        check_labels("class target", target, self.sizes[-1], n=batch)
        return target.long()  # (B,) class indices; a uint8 index would act as a mask

    def _forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``(acts, z)``: every layer's output and the output units' total input z (B, n_out)."""
        self._check_x(x)
        acts, n_layers = [x], len(self.params) // 2
        for l in range(n_layers):
            z = acts[-1] @ self.params[2 * l].T + self.params[2 * l + 1]  # (B, n_out) total input, eq. 1
            if l < n_layers - 1:
                acts.append(_ACT[self.act][0](z))
            else:
                acts.append(torch.sigmoid(z) if self.out == "sigmoid" else torch.softmax(z, dim=1))
        return acts, z

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """All activations ``[x, y_1, ..., y_out]``, each (B, n_l) (eqs. 1-2, layer by layer)."""
        return self._forward(x)[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)[-1]

    def loss(self, z: torch.Tensor, target: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        """The loss from the output units' total input ``z`` (B, n_out), summed or averaged over B.

        Squared error 1/2 sum (sigmoid(z) - d)^2 (eq. 3), or cross-entropy -log softmax(z)_d with
        log softmax(z) = z - logsumexp(z): shifting by max(z) first keeps every exp() <= 1, so
        logits 60 and -60 give a loss of 120, not the inf of log(softmax(z)) in float32.
        """
        check_choice("reduction", reduction, ("sum", "mean"))
        check_tensor("z", z, dim=2, floating=True)
        if z.shape[1] != self.sizes[-1]:
            raise ValueError(f"expected z of shape (B, {self.sizes[-1]}), got {tuple(z.shape)}")
        return self._loss(z, self._check_target(target, z.shape[0]), reduction)

    def _loss(self, z: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
        if self.out == "sigmoid":
            per = 0.5 * ((torch.sigmoid(z) - target) ** 2).sum(1)  # (B,)
        else:
            m = z.max(1, keepdim=True).values  # (B, 1)
            lse = (m + torch.log(torch.exp(z - m).sum(1, keepdim=True))).squeeze(1)  # (B,) logsumexp
            per = lse - z.gather(1, target[:, None]).squeeze(1)  # (B,) -log softmax(z)_d
        return per.sum() if reduction == "sum" else per.mean()

    def backward(self, acts: list[torch.Tensor], target: torch.Tensor, reduction: str = "sum"):
        """Gradients of the loss w.r.t. ``[W_1, b_1, ...]``, by the backward pass (eqs. 4-7).

        ``acts`` is ``forward``'s list; ``reduction`` is ``"sum"`` or ``"mean"``, as in ``loss``.
        """
        check_choice("reduction", reduction, ("sum", "mean"))
        if not isinstance(acts, (list, tuple)) or len(acts) != len(self.sizes):
            got = f"a list of {len(acts)}" if isinstance(acts, (list, tuple)) else type(acts).__name__
            raise ValueError(f"backward expects forward()'s list of {len(self.sizes)} activations, got {got}")
        return self._backward(acts, self._check_target(target, acts[-1].shape[0]), reduction)

    def _backward(self, acts: list[torch.Tensor], target: torch.Tensor, reduction: str) -> list[torch.Tensor]:
        y = acts[-1]
        if self.out == "sigmoid":
            delta = (y - target) * y * (1 - y)  # (B, n_out) dE/dx_j, eqs. 4-5
        else:
            delta = y.clone()  # softmax + cross-entropy: dE/dx = y - onehot(d)
            delta[torch.arange(len(y)), target] -= 1
        if reduction == "mean":
            delta = delta / len(y)
        grads = [None] * len(self.params)
        for l in reversed(range(len(self.params) // 2)):
            grads[2 * l] = delta.T @ acts[l]  # (n_out, n_in) dE/dw_ji = dE/dx_j y_i, eq. 6
            grads[2 * l + 1] = delta.sum(0)  # (n_out,)
            if l > 0:  # dE/dy_i = sum_j dE/dx_j w_ji (eq. 7), then through f' (eq. 5)
                delta = (delta @ self.params[2 * l]) * _ACT[self.act][1](acts[l])
        return grads

    def loss_and_grads(self, x: torch.Tensor, target: torch.Tensor, reduction: str = "sum"):
        """``(loss, outputs (B, n_out), grads)``: one forward and one backward pass."""
        check_choice("reduction", reduction, ("sum", "mean"))
        acts, z = self._forward(x)
        target = self._check_target(target, x.shape[0])
        return self._loss(z, target, reduction), acts[-1], self._backward(acts, target, reduction)


class DeltaRule:
    """Gradient descent with momentum: dw(t) = -eta dE/dw(t) + alpha dw(t-1) (eq. 9).

    Works on ``Value`` parameters with float grads and on tensors with tensor grads.
    """

    def __init__(self, eta: float, alpha: float = 0.0):
        self.eta = check_float("learning rate eta", eta, 0.0, low_open=True)
        self.alpha = check_float("momentum alpha", alpha, 0.0, 1.0, high_open=True)
        self.velocity = None

    def step(self, params: list, grads: list) -> None:
        """Change every parameter in place by dw(t), remembering dw(t) for the next step.

        ``params`` and ``grads`` are lists of the same length, and the same length at every step.
        """
        n = check_same_length("DeltaRule.step(params, grads)", params, grads)
        if self.velocity is None:
            self.velocity = [g * 0.0 for g in grads]
        elif len(self.velocity) != n:
            raise ValueError(f"DeltaRule.step: got {n} parameters, but earlier steps had {len(self.velocity)}")
        for i, (p, g) in enumerate(zip(params, grads)):
            self.velocity[i] = -self.eta * g + self.alpha * self.velocity[i]
            if isinstance(p, Value):
                p.data += self.velocity[i]
            else:
                p.add_(self.velocity[i])


def train_patterns(net, X, T, eta: float, alpha: float, max_sweeps: int, stop_tol: float = 0.5) -> dict:
    """Batch learning on a small pattern set: one weight change per sweep through all patterns.

    The gradient is accumulated over every pattern before each change (Nature, Fig. 1
    caption). A sweep "solves" the task when every output is within 0.5 of its target (all
    patterns correct); training stops once every output is within ``stop_tol``. Returns
    ``solved_at`` (weight changes made before the first solved sweep, or None),
    ``converged_at`` (the same for ``stop_tol``), ``losses`` (E per sweep), final ``outputs``.
    """
    check_int("max_sweeps", max_sweeps, low=0)
    check_float("stop_tol", stop_tol, 0.0)
    opt, losses, solved_at = DeltaRule(eta, alpha), [], None
    for sweep in range(max_sweeps + 1):
        E, out, grads = net.loss_and_grads(X, T)
        losses.append(float(E))
        err = float((out - torch.as_tensor(T, dtype=out.dtype)).abs().max())
        if solved_at is None and err < 0.5:
            solved_at = sweep
        if err < stop_tol or sweep == max_sweeps:
            break
        opt.step(net.parameters(), grads)
    return {"solved_at": solved_at, "converged_at": sweep if err < stop_tol else None,
            "losses": losses, "outputs": out}


def xor(dtype=torch.float64):
    """The four XOR patterns: X (4, 2), T (4, 1)."""
    X = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=dtype)
    return X, (X[:, :1] != X[:, 1:]).to(dtype)


def encoder(n: int = 8, dtype=torch.float64):
    """The n-log2(n)-n encoder task: n one-hot patterns to reproduce at the output (PDP ch. 8)."""
    check_int("n", n, low=1)
    eye = torch.eye(n, dtype=dtype)
    return eye, eye.clone()


def mirror_symmetry(n: int = 6, dtype=torch.float64):
    """All 2^n binary vectors, target 1 when the vector reads the same backwards (Nature Fig. 1)."""
    check_int("mirror symmetry's number of bits n", n, low=2)
    bits = (torch.arange(2**n)[:, None] >> torch.arange(n - 1, -1, -1)) & 1  # (2^n, n)
    X = bits.to(dtype)
    return X, (X == X.flip(1)).all(1, keepdim=True).to(dtype)
