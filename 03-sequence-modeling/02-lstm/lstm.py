"""Long short-term memory from scratch: the 1997 cell (Hochreiter & Schmidhuber), the modern LSTM and the GRU.

The 1997 memory cell (Sec. 4.1, appendix A.1) is built around the constant error carousel (CEC): a
linear unit with a fixed self-connection of weight 1.0, so its internal state is carried unchanged
from step to step and so is the error flowing back through it. Two multiplicative gates guard it:

    s_c(t) = s_c(t-1) + y_in(t) g(net_c(t)),    y_c(t) = y_out(t) h(s_c(t)),    s_c(0) = 0    (A.7)

with gates y_in = f(net_in), y_out = f(net_out), f the logistic sigmoid in [0, 1] (A.1), g in [-2, 2]
(A.3) and h in [-1, 1] (A.2). There is no forget gate (it came in 2000, the next topic).

Contents:
- ``adding_problem``: the paper's Experiment 4 (Sec. 5.4.1) sequence generator.
- ``LSTM1997``: memory cell blocks with input and output gates, optionally with the paper's truncated
  gradient (A.1.2).
- ``LSTM`` and ``GRU``: the modern cells over a sequence, with ``nn.LSTM`` / ``nn.GRU``'s parameter names,
  so either loads the other's ``state_dict`` and gives the same outputs, states and gradients.
- ``LastStepRegressor`` / ``make_model``: a recurrent core read out at each sequence's last element.
- ``bench_lstm``: our LSTM loop against ``nn.LSTM``, forward + backward.
"""

import math

import torch
import torch.nn as nn

from common.checks import check_choice, check_float, check_int, check_tensor


def adding_problem(n, T, generator=None):
    """``n`` sequences of the adding problem with minimal length ``T`` (Experiment 4, Sec. 5.4.1).

    Each element is a pair (value, marker); values are uniform in [-1, 1]. One of the first 10 pairs is
    marked (marker 1.0; its value is X1), then one of the first T/2 - 1 still unmarked pairs (X2). The
    first and the final pair carry marker -1 unless marked; all other markers are 0. If the first pair
    is marked its value is set to 0 (the paper says "X1"; we zero whichever mark lands there). Lengths are
    uniform in [T, T + T/10]; shorter sequences are padded with zeros after their end.
    Returns x (n, T + T//10, 2), lengths (n,) int64, target y = 0.5 + (X1 + X2) / 4 (n,) in [0, 1].
    """
    check_int("n", n, low=1)
    check_int("T", T, low=22)  # T/2 - 1 >= 10: the second mark has room beside the first
    L = T + T // 10
    lengths = torch.randint(T, L + 1, (n,), generator=generator)  # (n,)
    values = torch.rand(n, L, generator=generator) * 2 - 1  # (n, L) uniform in [-1, 1]
    p1 = torch.randint(0, 10, (n,), generator=generator)  # X1: one of the first 10 pairs
    k = torch.randint(0, T // 2 - 1, (n,), generator=generator)  # X2: the k-th still unmarked pair
    p2 = k + (k >= p1).long()  # skip over X1's position, so p2 != p1 and p2 <= T/2 - 1
    rows = torch.arange(n)
    marker = torch.zeros(n, L)
    marker[:, 0] = -1.0
    marker[rows, lengths - 1] = -1.0  # the final pair
    marker[rows, p1] = 1.0
    marker[rows, p2] = 1.0
    values[:, 0] = torch.where(marker[:, 0] == 1.0, 0.0, values[:, 0])  # a marked first pair counts 0
    inside = torch.arange(L) < lengths[:, None]  # (n, L): padding after the end is all zeros
    values, marker = values * inside, marker * inside
    y = 0.5 + (values[rows, p1] + values[rows, p2]) / 4.0
    return torch.stack([values, marker], dim=2), lengths, y


def _check_sequence(owner, x, input_size):
    """x must be a floating (B, T, input_size) batch with T >= 1; returns (B, T)."""
    check_tensor(f"{owner} input (B, T, {input_size})", x, dim=3, floating=True)
    if x.shape[1] < 1 or x.shape[2] != input_size:
        raise ValueError(f"{owner} expected a sequence (B, T >= 1, {input_size}), got {tuple(x.shape)}")
    return x.shape[0], x.shape[1]


def _check_state(owner, state, shapes, x):
    """``state`` must be None or a tuple of floating tensors of the given ``shapes`` (one per entry)."""
    if state is None:
        return tuple(x.new_zeros(s) for s in shapes)
    if isinstance(state, torch.Tensor) and len(shapes) == 1:
        state = (state,)
    if not isinstance(state, (tuple, list)) or len(state) != len(shapes):
        raise ValueError(f"{owner} state must be a tuple of {len(shapes)} tensors with shapes {list(shapes)}, "
                         f"got {type(state).__name__}")
    for t, s in zip(state, shapes):
        check_tensor(f"{owner} state", t, dim=2, floating=True, nonempty=False)
        if tuple(t.shape) != tuple(s):
            raise ValueError(f"{owner} expected a state of shape {tuple(s)} (batch, hidden size), "
                             f"got {tuple(t.shape)}")
    return tuple(state)


def squash_g(x):
    """The paper's g (A.3): 4 / (1 + exp(-x)) - 2, a sigmoid with range [-2, 2], squashing net_c."""
    return 4 * torch.sigmoid(x) - 2


def squash_h(x):
    """The paper's h (A.2): 2 / (1 + exp(-x)) - 1, a sigmoid with range [-1, 1], scaling the cell output."""
    return 2 * torch.sigmoid(x) - 1


class LSTM1997(nn.Module):
    """The 1997 LSTM hidden layer: ``n_blocks`` memory cell blocks of ``block_size`` cells (Sec. 4.1-4.4).

    The cells of a block share one input gate and one output gate. Every gate and cell input sees the
    current input x(t) and, as in Experiment 4, the previous activations of all cells and gates,
    u(t-1) = [y_c, y_in, y_out] (the fully connected hidden layer of Sec. 5.4.2); each has a bias.
    Per step (A.5-A.7): y_in = f(net_in), y_out = f(net_out), s_c += y_in g(net_c), y_c = y_out h(s_c).
    Initialisation as in Sec. 5.4.3: weights and biases uniform in [-``init_range``, ``init_range``], the
    input gate of block j biased to ``input_gate_bias[j]`` (default -3, -6, -9, ...: drift remedy, Sec. 4.8).

    ``truncated=True`` is the paper's truncated gradient (A.1.2): errors reaching the net inputs are not
    propagated back into u(t-1), only through the CEC's s(t-1). The default is the full gradient (BPTT).
    forward(x (B, T, input_size), state=None) -> (y_c (B, T, n_cells), (u, s)) with u (B, n_cells +
    2 n_blocks) and s (B, n_cells); a missing state is zeros (activations reset per sequence, Sec. 5).
    """

    def __init__(self, input_size, n_blocks, block_size=1, truncated=False, init_range=0.1, input_gate_bias=None):
        super().__init__()
        self.input_size = check_int("input_size", input_size, low=1)
        self.n_blocks = check_int("n_blocks", n_blocks, low=1)
        self.block_size = check_int("block_size", block_size, low=1)
        if not isinstance(truncated, bool):
            raise ValueError(f"truncated must be a bool, got {truncated!r}")
        self.truncated = truncated
        init_range = check_float("init_range", init_range, low=0.0)
        self.n_cells = n_blocks * block_size
        self.n_units = self.n_cells + 2 * n_blocks  # cells, input gates, output gates
        # rows: [input gates (n_blocks) | output gates (n_blocks) | cell inputs (n_cells)]
        self.weight = nn.Parameter(torch.empty(self.n_units, input_size + self.n_units))  # (U, I + U)
        self.bias = nn.Parameter(torch.empty(self.n_units))  # (U,)
        nn.init.uniform_(self.weight, -init_range, init_range)
        nn.init.uniform_(self.bias, -init_range, init_range)
        if input_gate_bias is None:
            input_gate_bias = [-3.0 * (j + 1) for j in range(n_blocks)]
        if not isinstance(input_gate_bias, (list, tuple)) or len(input_gate_bias) != n_blocks:
            raise ValueError(f"input_gate_bias must list {n_blocks} numbers (one per block), got {input_gate_bias!r}")
        with torch.no_grad():
            for j, b in enumerate(input_gate_bias):
                self.bias[j] = check_float("input_gate_bias entry", b)

    def forward(self, x, state=None):
        """Run the blocks over x (B, T, input_size) from ``state`` = (u, s) or zeros; see the class docstring."""
        B, T = _check_sequence("LSTM1997", x, self.input_size)
        nb, S = self.n_blocks, self.block_size
        u, s = _check_state("LSTM1997", state, [(B, self.n_units), (B, self.n_cells)], x)
        w_x, w_u = self.weight[:, :self.input_size], self.weight[:, self.input_size:]  # (U, I), (U, U)
        pre_x = x @ w_x.T + self.bias  # (B, T, U): the input part of every net input, all steps at once
        outputs = []
        for t in range(T):
            net = pre_x[:, t] + (u.detach() if self.truncated else u) @ w_u.T  # (B, U): nets from u(t-1)
            y_in = torch.sigmoid(net[:, :nb])  # (B, nb) input gates (A.5)
            y_out = torch.sigmoid(net[:, nb:2 * nb])  # (B, nb) output gates (A.6)
            gin = squash_g(net[:, 2 * nb:])  # (B, nb * S) squashed cell inputs
            s = s + y_in.repeat_interleave(S, dim=1) * gin  # the CEC: weight 1.0, no decay (A.7)
            y_c = y_out.repeat_interleave(S, dim=1) * squash_h(s)  # (B, nb * S) cell outputs
            u = torch.cat([y_c, y_in, y_out], dim=1)  # (B, U): what every unit sees at t + 1
            outputs.append(y_c)
        return torch.stack(outputs, dim=1), (u, s)


class LSTM(nn.Module):
    """The modern LSTM (with the forget gate of 2000) over a sequence; parameters named as ``nn.LSTM``'s.

        [i, f, g, o] = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh         (PyTorch's gate order)
        c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g),   h_t = sigmoid(o) * tanh(c_t)

    Setting sigmoid(f) = 1 gives back the 1997 CEC with h = g = tanh. Initialised as ``nn.LSTM``:
    uniform in [-1/sqrt(H), 1/sqrt(H)]. forward(x (B, T, I), state=None or (h, c) each (B, H))
    -> (h over time (B, T, H), (h_T, c_T)), like ``nn.LSTM(batch_first=True)`` with (B, H) states.
    """

    gates = 4

    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.input_size = check_int("input_size", input_size, low=1)
        self.hidden_size = H = check_int("hidden_size", hidden_size, low=1)
        self.weight_ih_l0 = nn.Parameter(torch.empty(self.gates * H, input_size))  # (G H, I)
        self.weight_hh_l0 = nn.Parameter(torch.empty(self.gates * H, H))  # (G H, H)
        self.bias_ih_l0 = nn.Parameter(torch.empty(self.gates * H))
        self.bias_hh_l0 = nn.Parameter(torch.empty(self.gates * H))
        for p in self.parameters():
            nn.init.uniform_(p, -1 / math.sqrt(H), 1 / math.sqrt(H))

    def _states(self, x, state):
        return _check_state(type(self).__name__, state, [(x.shape[0], self.hidden_size)] * 2, x)

    def step(self, xw, state):
        """One step from xw = W_ih x_t + b_ih (B, 4H) and (h, c); returns the new (h, c)."""
        h, c = state
        i, f, g, o = (xw + h @ self.weight_hh_l0.T + self.bias_hh_l0).chunk(4, dim=1)  # (B, H) each
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def forward(self, x, state=None):
        """Run over x (B, T, input_size); see the class docstring."""
        _, T = _check_sequence(type(self).__name__, x, self.input_size)
        state = self._states(x, state)
        xw = x @ self.weight_ih_l0.T + self.bias_ih_l0  # (B, T, G H): input terms of all steps at once
        outputs = []
        for t in range(T):
            state = self.step(xw[:, t], state)
            outputs.append(state[0])
        return torch.stack(outputs, dim=1), state


class GRU(LSTM):
    """The gated recurrent unit (Cho et al. 2014, eq. 5-8) over a sequence; parameters named as ``nn.GRU``'s.

        r = sigmoid(W_ir x + b_ir + W_hr h + b_hr),   z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r * (W_hn h + b_hn))          (reset_after=True: PyTorch's form)
        n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)          (reset_after=False: Cho et al.'s eq. 8)
        h_t = (1 - z) * n + z * h_{t-1}                         (eq. 7)

    forward(x (B, T, I), state=None or h (B, H)) -> (h over time (B, T, H), h_T).
    """

    gates = 3

    def __init__(self, input_size, hidden_size, reset_after=True):
        super().__init__(input_size, hidden_size)
        if not isinstance(reset_after, bool):
            raise ValueError(f"reset_after must be a bool, got {reset_after!r}")
        self.reset_after = reset_after

    def _states(self, x, state):
        return _check_state("GRU", state, [(x.shape[0], self.hidden_size)], x)

    def step(self, xw, state):
        """One step from xw = W_ih x_t + b_ih (B, 3H) and (h,); returns (h_new,)."""
        (h,) = state
        H = self.hidden_size
        xr, xz, xn = xw.chunk(3, dim=1)  # (B, H) each
        w_r, w_z, w_n = self.weight_hh_l0.split(H)  # (H, H) each
        b_r, b_z, b_n = self.bias_hh_l0.split(H)
        r = torch.sigmoid(xr + h @ w_r.T + b_r)  # reset gate (eq. 5)
        z = torch.sigmoid(xz + h @ w_z.T + b_z)  # update gate (eq. 6)
        n = torch.tanh(xn + (r * (h @ w_n.T + b_n) if self.reset_after else (r * h) @ w_n.T + b_n))  # eq. 8
        return ((1 - z) * n + z * h,)

    def forward(self, x, state=None):
        """Run over x (B, T, input_size); returns (outputs (B, T, H), h_T (B, H))."""
        out, (h,) = super().forward(x, state)
        return out, h


class LastStepRegressor(nn.Module):
    """A recurrent ``core`` read out by a linear unit at each sequence's last element (error only at the end).

    ``core(x)`` must return (outputs (B, T, features), state), as ``nn.LSTM(batch_first=True)`` and the
    modules above do. forward(x (B, T, I), lengths (B,) in [1, T]) -> predictions (B,).
    """

    def __init__(self, core, features):
        super().__init__()
        self.core = core
        self.head = nn.Linear(check_int("features", features, low=1), 1)

    def forward(self, x, lengths):
        """Predictions (B,) from the core's output at position lengths - 1 of each sequence."""
        check_tensor("LastStepRegressor input (B, T, I)", x, dim=3, floating=True)
        check_tensor("lengths", lengths, dim=1, integer=True)
        if lengths.shape[0] != x.shape[0] or int(lengths.min()) < 1 or int(lengths.max()) > x.shape[1]:
            raise ValueError(f"lengths must hold {x.shape[0]} values in [1, {x.shape[1]}], got shape "
                             f"{tuple(lengths.shape)}, range [{int(lengths.min())}, {int(lengths.max())}]")
        out, _ = self.core(x)  # (B, T, F)
        last = out[torch.arange(x.shape[0], device=x.device), lengths.to(x.device) - 1]  # (B, F)
        return self.head(last).squeeze(1)


KINDS = ("rnn", "lstm", "gru", "lstm1997")


def make_model(kind, hidden_size, input_size=2, fast=True, **kwargs):
    """A ``LastStepRegressor`` with a ``kind`` core: "rnn" (``nn.RNN``, tanh), "lstm", "gru" (``nn.LSTM`` /
    ``nn.GRU`` when ``fast``, else ours) or "lstm1997" (``hidden_size`` blocks; ``kwargs`` go to it)."""
    check_choice("kind", kind, KINDS)
    check_int("hidden_size", hidden_size, low=1)
    if kind == "lstm1997":
        core = LSTM1997(input_size, hidden_size, **kwargs)
        return LastStepRegressor(core, core.n_cells)  # the output unit sees only the cells (Sec. 5.4.2)
    if kind == "rnn":
        core = nn.RNN(input_size, hidden_size, batch_first=True)
    else:
        ours, theirs = {"lstm": (LSTM, nn.LSTM), "gru": (GRU, nn.GRU)}[kind]
        core = theirs(input_size, hidden_size, batch_first=True) if fast else ours(input_size, hidden_size)
    return LastStepRegressor(core, hidden_size)


def bench_lstm(device="cpu", repeats=10, batch=64, steps=50, input_size=32, hidden_size=128):
    """Forward + backward time of our ``LSTM`` loop against ``nn.LSTM`` on the same weights and data.

    x is (batch, steps, input_size); the loss is the sum of the outputs. Returns {"ours_ms", "theirs_ms",
    "ratio", "name"}: medians over ``repeats`` after 2 warm-ups, alternating the two sides
    (:func:`common.bench.time_forward_backward`), ratio = ours / theirs. Ours launches a few
    small kernels per gate per step and autograd records each; ``nn.LSTM`` runs a fused cell (cuDNN on CUDA).
    """
    from common.bench import time_forward_backward

    for name, v in (("repeats", repeats), ("batch", batch), ("steps", steps), ("input_size", input_size),
                    ("hidden_size", hidden_size)):
        check_int(name, v, low=1)
    device = torch.device(device)
    torch.manual_seed(0)
    theirs = nn.LSTM(input_size, hidden_size, batch_first=True).to(device)
    ours = LSTM(input_size, hidden_size).to(device)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(batch, steps, input_size, device=device)
    t_ours, t_theirs = time_forward_backward(lambda v: ours(v)[0], lambda v: theirs(v)[0], x, device=device,
                                             repeats=repeats, warmup=2)
    return {"ours_ms": t_ours, "theirs_ms": t_theirs, "ratio": t_ours / t_theirs,
            "name": f"LSTM forward+backward, x ({batch}, {steps}, {input_size}), hidden {hidden_size}"}
