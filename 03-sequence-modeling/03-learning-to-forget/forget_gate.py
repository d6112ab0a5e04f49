"""Learning to forget (Gers, Schmidhuber & Cummins, 2000): the forget gate and the continual Reber task.

Standard LSTM (1997) adds gated input to a cell state that is never scaled down (eq. 6):
    s_c(t) = s_c(t-1) + y_in(t) g(net_c(t))
so on a continual input stream, with nothing to reset it, s_c drifts and h(s_c) saturates (Sec. 2.1).
The extended LSTM multiplies the old state by a learned *forget gate* y_phi in [0, 1] (eq. 10-11):
    s_c(t) = y_phi(t) s_c(t-1) + y_in(t) g(net_c(t))

Contents:
- the embedded Reber grammar (ERG) as a transition table, a vectorised string sampler, an acceptor,
  and the continual stream (CERG, Sec. 4.1): strings concatenated with no reset, and the set of
  possible next symbols at every position (the training targets);
- ``ExtendedLSTM``: several independent nets stacked along a leading dimension, each a layer of memory
  blocks (S cells sharing an input, forget and output gate) with the paper's squashing functions and
  initialisation (Sec. 4.2); ``forget=False`` for a net gives standard LSTM (y_phi fixed at 1);
- ``rtrl_step`` / ``online_step``: the paper's learning algorithm (Sec. 3.2, eq. 12-24): truncated
  BPTT for the output units and gates, forward-mode (RTRL) partials for the cells, input and forget
  gates, weights changed after every symbol;
- ``OnlineTrainer`` (the training protocol of Sec. 4.3), ``error_free_length`` (the test of Sec. 4.1),
  ``bench_cell`` (forward + backward of the cell against ``nn.LSTM``).
"""


import torch
import torch.nn as nn

from common.checks import check_float, check_int, check_tensor

SYMBOLS = "BTSXPVE"  # 7 symbols, one input and one output unit each
_REBER = {0: "B1", 1: "T2P3", 2: "S2X4", 3: "T3V5", 4: "X3S6", 5: "P4V6", 6: "E7"}  # Fig. 3 (left); 7 = end


def _embedded_table():
    """Transition table (Q, 7) of the embedded grammar (Fig. 3, right); -1 = no edge. State 0 is the
    start, and the final E leads back to 0: in the continual stream the next string follows at once."""
    edges = {0: {"B": 1}, 1: {"T": 2, "P": 10}}
    for k, (sym, base) in enumerate((("T", 2), ("P", 10))):  # one inner Reber grammar per branch
        for q, spec in _REBER.items():
            edges[base + q] = {spec[i]: base + int(spec[i + 1]) for i in range(0, len(spec), 2)}
        edges[base + 7] = {sym: 18 + k}  # after the inner E: repeat the second symbol ...
        edges[18 + k] = {"E": 0}  # ... then E, back to the start
    table = torch.full((20, 7), -1, dtype=torch.long)
    for q, out in edges.items():
        for sym, nxt in out.items():
            table[q, SYMBOLS.index(sym)] = nxt
    return table


TRANSITIONS = _embedded_table()  # (20, 7)
NEXT_SETS = (TRANSITIONS >= 0).float()  # (20, 7): the symbols allowed after reaching each state


def accepts(string: str) -> bool:
    """Whether ``string`` (letters of SYMBOLS) is one embedded Reber string, walked on ``TRANSITIONS``."""
    q = 0
    for i, ch in enumerate(string):
        if ch not in SYMBOLS or TRANSITIONS[q, SYMBOLS.index(ch)] < 0 or (q == 0 and i > 0):
            return False
        q = int(TRANSITIONS[q, SYMBOLS.index(ch)])
    return len(string) > 0 and q == 0


def sample_strings(n: int, generator=None):
    """``n`` embedded Reber strings: at each branch one of the two edges with probability 0.5 (Sec. 4.1).

    Returns (symbols, states, lengths): symbols (n, L) symbol ids padded with -1, states (n, L) the
    grammar state after each symbol (-1 on padding), lengths (n,). All strings grow in parallel.
    """
    check_int("n", n, low=1)
    q = torch.zeros(n, dtype=torch.long)
    done = torch.zeros(n, dtype=torch.bool)
    syms, states = [], []
    while not bool(done.all()):
        allowed = NEXT_SETS[q]  # (n, 7)
        s = torch.multinomial(allowed, 1, generator=generator).squeeze(1)  # uniform over allowed edges
        q = TRANSITIONS[q, s]
        syms.append(torch.where(done, -1, s))
        states.append(torch.where(done, -1, q))
        done = done | (q == 0)
    symbols, states = torch.stack(syms, 1), torch.stack(states, 1)
    return symbols, states, (symbols >= 0).sum(1)


def decode(ids) -> str:
    """Symbol ids (-1 = padding, skipped) as a string of SYMBOLS."""
    return "".join(SYMBOLS[i] for i in ids.tolist() if i >= 0)


def continual_streams(n_streams: int, length: int, generator=None):
    """``n_streams`` continual streams (CERG) of ``length`` symbols: ERG strings concatenated, no reset.

    Returns (symbols, states), both (n, length) long: the symbol ids and the grammar state after each
    symbol. ``NEXT_SETS[states]`` (n, length, 7) are the targets, the possible next symbols; a new ERG
    string begins wherever the previous state is 0.
    """
    check_int("n_streams", n_streams, low=1)
    check_int("length", length, low=1)
    per_row = length // 9 + 2  # an ERG string has at least 9 symbols
    while True:
        sym, st, _ = sample_strings(n_streams * per_row, generator)
        sym, st = sym.reshape(n_streams, -1), st.reshape(n_streams, -1)  # strings side by side, padded
        order = torch.sort((sym < 0).int(), dim=1, stable=True).indices  # padding to the end of each row
        sym, st = sym.gather(1, order), st.gather(1, order)
        if int((sym >= 0).sum(1).min()) >= length:
            return sym[:, :length], st[:, :length]
        per_row *= 2


def _h(x):
    return 2 * torch.sigmoid(x) - 1  # eq. (8): the cell output squashing, range [-1, 1]


class ExtendedLSTM(nn.Module):
    """``n_nets`` independent LSTM nets of Sec. 4.2, stacked along a leading dimension N.

    Each net: I inputs -> B memory blocks of S cells (each block one input, forget and output gate) ->
    K sigmoid outputs. Cells and gates see [x(t), y_c(t-1), 1] (the inputs, all cell outputs, a bias);
    the outputs see [y_c(t), x(t), 1] (the "shortcut" from the inputs with ``shortcut=True``). Weights
    W (N, 3B + BS, I + BS + 1), rows [input gates | forget gates | output gates | cells], and
    W_out (N, K, BS + I + 1). ``forget`` (bool or one per net): False gives standard LSTM, y_phi = 1.
    Only gates and output units have a bias (Sec. 4.2). Weights a net does not have (cell biases, a
    standard net's forget gates, the shortcut when off) are held at 0 by the masks ``W_mask``, ``W_out_mask``.
    Initialisation (Sec. 4.2): input and output gate biases -0.5, -1.0, -1.5, ... blockwise, forget
    gate biases +0.5, +1.0, ...; every other weight (the output biases too) U(-0.2, 0.2).
    """

    def __init__(self, n_nets=1, n_blocks=4, cells_per_block=2, n_in=7, n_out=7, forget=True, shortcut=True,
                 init_range=0.2, generator=None):
        super().__init__()
        N, B, S = (check_int(k, v, low=1) for k, v in (("n_nets", n_nets), ("n_blocks", n_blocks),
                                                        ("cells_per_block", cells_per_block)))
        self.n_in, self.n_out = check_int("n_in", n_in, low=1), check_int("n_out", n_out, low=1)
        init_range = check_float("init_range", init_range, low=0.0)
        self.B, self.S, self.C = B, S, B * S
        forget = torch.as_tensor(forget) if isinstance(forget, (bool, list, tuple, torch.Tensor)) else None
        if forget is None or forget.dtype != torch.bool or forget.dim() > 1 or forget.numel() not in (1, N):
            raise ValueError(f"forget must be a bool or {N} bools (one per net), got {forget!r}")
        self.register_buffer("forget", forget.expand(N).clone())  # (N,)
        self.shortcut = bool(shortcut)
        cols, rows = n_in + self.C + 1, 3 * B + self.C

        def uniform(*shape):
            return (torch.rand(shape, generator=generator) * 2 - 1) * init_range

        W, W_out = uniform(N, rows, cols), uniform(N, n_out, self.C + n_in + 1)
        ramp = 0.5 * torch.arange(1, B + 1, dtype=torch.float)  # 0.5, 1.0, 1.5, ... one per block
        W[:, :B, -1], W[:, B:2 * B, -1], W[:, 2 * B:3 * B, -1] = -ramp, ramp, -ramp
        W_mask, W_out_mask = torch.ones(N, rows, cols), torch.ones(N, n_out, self.C + n_in + 1)
        W_mask[:, 3 * B:, -1] = 0  # the cells have no bias
        W_mask[:, B:2 * B] *= self.forget[:, None, None]  # standard LSTM has no forget gate
        W_out_mask[:, :, self.C:self.C + n_in] = float(self.shortcut)
        self.register_buffer("W_mask", W_mask)
        self.register_buffer("W_out_mask", W_out_mask)
        self.W, self.W_out = nn.Parameter(W * W_mask), nn.Parameter(W_out * W_out_mask)

    def n_weights(self) -> int:
        """Adjustable weights of the first net (375 for the paper's net without the shortcut, Sec. 4.2)."""
        return int(self.W_mask[0].sum() + self.W_out_mask[0].sum())

    def zero_state(self, m: int = 1):
        """The reset state for m streams per net: s_c, y_c (N, m, C) and the partials dS (N, m, 3, C, cols)."""
        check_int("streams per net", m, low=1)
        N, C, cols = self.W.shape[0], self.C, self.W.shape[2]
        z = self.W.new_zeros
        return {"s": z(N, m, C), "y": z(N, m, C), "dS": z(N, m, 3, C, cols)}

    def _check(self, x, state):
        check_tensor("ExtendedLSTM input x (N, M, n_in)", x, dim=3, floating=True)
        if x.shape[0] != self.W.shape[0] or x.shape[2] != self.n_in:
            raise ValueError(f"ExtendedLSTM expected x of shape ({self.W.shape[0]}, M, {self.n_in}), got {tuple(x.shape)}")
        if state is None:
            return self.zero_state(x.shape[1])
        want = (self.W.shape[0], x.shape[1], self.C)
        if not isinstance(state, dict) or "s" not in state or tuple(state["s"].shape) != want:
            got = tuple(state["s"].shape) if isinstance(state, dict) and "s" in state else type(state).__name__
            raise ValueError(f"state s must have shape {want} (nets, streams, cells), got {got}")
        return state

    def _step(self, x, y_prev, s_prev):
        """Eq. (1)-(2), (4)-(5), (7)-(8), (10)-(11) for one step; x (N, M, I), y_prev, s_prev (N, M, C)."""
        N, M, B, S = x.shape[0], x.shape[1], self.B, self.S
        one = x.new_ones(N, M, 1)
        u = torch.cat([x, y_prev, one], 2)  # (N, M, cols): the source units y_m
        net = torch.bmm(u, self.W.mT)  # (N, M, 3B + C): net_in, net_phi, net_out, net_c
        gates = torch.sigmoid(net[..., :3 * B]).unflatten(-1, (3, B))  # eq. (1), (2), (10)   (N, M, 3, B)
        gates = gates[..., None].expand(N, M, 3, B, S).reshape(N, M, 3, self.C)  # one value per cell
        y_in, y_phi, y_out = gates.unbind(2)  # (N, M, C) each
        y_phi = torch.where(self.forget[:, None, None], y_phi, 1.0)  # standard LSTM: the CEC weight 1.0
        sig_c = torch.sigmoid(net[..., 3 * B:])
        g = 4 * sig_c - 2  # eq. (4)-(5)
        s = y_phi * s_prev + y_in * g  # eq. (11); eq. (6) when y_phi = 1
        h_s = _h(s)
        y_c = y_out * h_s  # eq. (7)
        v = torch.cat([y_c, x, one], 2)  # (N, M, C + I + 1): what the output units see
        y_k = torch.sigmoid(torch.bmm(v, self.W_out.mT))  # eq. (9), from the current step   (N, M, K)
        return y_k, s, y_c, (u, v, y_in, y_phi, y_out, sig_c, g, h_s)

    def forward(self, xs, state=None, truncate=False):
        """Run xs (T >= 1, N, M, n_in) from ``state`` (None: reset) with autograd. Returns outputs y_k
        (T, N, M, K), a trace {"s": cell states, "y": cell outputs, "phi": forget gates}, each (T, N, M, C),
        and the final state. ``truncate=True`` cuts the error flow through the recurrent cell outputs
        y_c(t-1) (Sec. 3.2), so only the CECs carry it back in time, as in the paper's learning rule."""
        check_tensor("ExtendedLSTM input xs (T, N, M, n_in)", xs, dim=4, floating=True)
        state = self._check(xs[0], state)
        s, y = state["s"], state["y"]
        outs, trace = [], {"s": [], "y": [], "phi": []}
        for x in xs:
            y_k, s, y, extra = self._step(x, y.detach() if truncate else y, s)
            outs.append(y_k)
            for k, v in (("s", s), ("y", y), ("phi", extra[3])):
                trace[k].append(v)
        return torch.stack(outs), {k: torch.stack(v) for k, v in trace.items()}, {"s": s, "y": y}

    @torch.no_grad()
    def rtrl_step(self, x, target, state=None):
        """One step of the paper's learning algorithm: forward, then the truncated gradient of
        E(t) = 1/2 sum_k (t_k - y_k)^2 (eq. 12) for every weight, summed over the M streams.

        x, target (N, M, 7). Returns (y_k (N, M, K), new state with the updated partials, grads) where
        grads = {"W": dE/dW, "W_out": dE/dW_out} (an update is W -= lr * grad, eq. 13).
        """
        state = self._check(x, state)
        if target.shape != x.shape[:2] + (self.n_out,):
            raise ValueError(f"target must have shape {tuple(x.shape[:2]) + (self.n_out,)}, got {tuple(target.shape)}")
        B, S, C = self.B, self.S, self.C
        s_prev = state["s"]
        y_k, s, y_c, (u, v, y_in, y_phi, y_out, sig_c, g, h_s) = self._step(x, state["y"], s_prev)
        delta_k = (y_k - y_k * y_k) * (target - y_k)  # eq. (14): f'(net_k) e_k, f' = f (1 - f)   (N, M, K)
        back = torch.bmm(delta_k, self.W_out[:, :, :C])  # sum_k w_kc delta_k          (N, M, C)
        delta_out = ((y_out - y_out * y_out) * h_s * back).unflatten(-1, (B, S)).sum(-1)  # eq. (15)  (N, M, B)
        e_s = y_out * 0.5 * (1 - h_s * h_s) * back  # eq. (17), h'(s) = (1 - h^2) / 2   (N, M, C)
        # the partials ds/dw of eq. (19)-(21) for the cell's own weights, its input and forget gate,
        # stacked (N, M, 3, C, cols); all three decay with the forget gate (eq. 18, first term)
        coef = torch.stack([4 * (sig_c - sig_c * sig_c) * y_in,  # eq. (19): g'(net_c) y_in
                            g * (y_in - y_in * y_in),  # eq. (20): g(net_c) f'(net_in)
                            s_prev * (y_phi - y_phi * y_phi)], 2)  # eq. (21), with s(t-1)
        dS = state["dS"] * y_phi[:, :, None, :, None] + coef[..., None] * u[:, :, None, None, :]
        grad_s = (e_s[:, :, None, :, None] * dS).sum(1)  # eq. (23); summed over streams   (N, 3, C, cols)
        grad_gates = grad_s[:, 1:].unflatten(2, (B, S)).sum(3).flatten(1, 2)  # eq. (24): over the block's cells
        grad_W = -torch.cat([grad_gates, torch.bmm(delta_out.mT, u), grad_s[:, 0]], 1)  # rows in | phi | out | c
        grad_out = -torch.bmm(delta_k.mT, v)  # eq. (13)-(14)   (N, K, C + I + 1)
        grads = {"W": grad_W * self.W_mask, "W_out": grad_out * self.W_out_mask}  # only the weights a net has
        return y_k, {"s": s, "y": y_c, "dS": dS}, grads

    @torch.no_grad()
    def online_step(self, x, target, state, lr):
        """``rtrl_step`` then the weight change of every net at once: W -= lr * grad (lr a float or (N,))."""
        y_k, state, grads = self.rtrl_step(x, target, state)
        lr = torch.as_tensor(lr, dtype=self.W.dtype).reshape(-1, 1, 1)
        self.W.sub_(lr * grads["W"])
        self.W_out.sub_(lr * grads["W_out"])
        return y_k, state


def correct(y, target):
    """The paper's test (Sec. 4.1): every output unit's squared error below 0.49. (..., K) -> (...) bool."""
    return ((target - y) ** 2 < 0.49).all(-1)


def _reset(state, mask):
    """Zero the state and partials of the streams where ``mask`` (N, M) is True."""
    for t in state.values():
        t.masked_fill_(mask.reshape(mask.shape + (1,) * (t.dim() - 2)), 0.0)


@torch.no_grad()
def error_free_length(net, symbols, targets):
    """Feed every net the same test streams symbols (M, L), targets (M, L, 7) from a reset state and
    count the symbols each predicts correctly before its first error (Sec. 4.1): lengths (N, M) long.
    Stops early once every stream has failed."""
    check_tensor("symbols (M, L)", symbols, dim=2, integer=True)
    M, L = symbols.shape
    if targets.shape != (M, L, net.n_out):
        raise ValueError(f"targets must have shape {(M, L, net.n_out)}, got {tuple(targets.shape)}")
    N = net.W.shape[0]
    xs = torch.eye(net.n_in, dtype=net.W.dtype)[symbols]  # (M, L, I) one-hot
    state, alive = net.zero_state(M), torch.ones(N, M, dtype=torch.bool)
    length = torch.zeros(N, M, dtype=torch.long)
    for t in range(L):
        y, s, y_c, _ = net._step(xs[:, t].expand(N, M, -1), state["y"], state["s"])
        state = {"s": s, "y": y_c}
        alive &= correct(y, targets[:, t])
        length += alive
        if not bool(alive.any()):
            break
    return length


class OnlineTrainer:
    """The training protocol of Sec. 4.3 for N nets at once, each on its own continual stream.

    symbols, states (N, T): each net's training stream and the grammar state after each symbol (from
    ``continual_streams``; a stream is used cyclically, so its last whole string runs into its first).
    Weights change after every symbol (``online_step``). A training stream ends at the first wrong
    prediction or after ``max_stream`` symbols; the net is then reset and its next stream begins at
    the next ERG string. Learning rate lr * gamma^k, k = symbols since the stream began (gamma = 1:
    constant). ``ended`` collects (step, net, stream length) for every finished stream.
    """

    def __init__(self, net, symbols, states, lr, gamma=1.0, max_stream=100_000):
        check_tensor("symbols (N, T)", symbols, dim=2, integer=True)
        N, T = symbols.shape
        if N != net.W.shape[0] or states.shape != (N, T):
            raise ValueError(f"expected symbols and states of shape (N={net.W.shape[0]}, T), "
                             f"got {tuple(symbols.shape)} and {tuple(states.shape)}")
        self.net, self.symbols, self.states = net, symbols, states.long()
        self.lr = torch.as_tensor(check_float("lr", lr, low=0.0) if isinstance(lr, (int, float)) else lr,
                                  dtype=net.W.dtype).expand(N)
        self.gamma = torch.as_tensor(gamma, dtype=net.W.dtype).expand(N)
        self.max_stream = check_int("max_stream", max_stream, low=1)
        starts = torch.cat([torch.ones(N, 1, dtype=torch.bool), self.states[:, :-1] == 0], 1)  # (N, T)
        idx = torch.where(starts, torch.arange(T), T)
        self.end = idx.masked_fill(~starts, -1).max(1).values  # the last string start: [0, end) is whole strings
        after = torch.flip(torch.cummin(torch.flip(idx, [1]), 1).values, [1])  # first start at or after t
        self.next_start = torch.cat([after[:, 1:], torch.full((N, 1), T)], 1)  # first start after t
        self.pos, self.run_len = torch.zeros(N, dtype=torch.long), torch.zeros(N, dtype=torch.long)
        self.state, self.step, self.ended = net.zero_state(1), 0, []
        self._eye, self._rows = torch.eye(net.n_in, dtype=net.W.dtype), torch.arange(N)
        self._sets = NEXT_SETS.to(net.W.dtype)

    @torch.no_grad()
    def run(self, n_steps: int, frozen=None) -> None:
        """Train for ``n_steps`` symbols; nets where ``frozen`` (N,) is True keep running but do not learn."""
        check_int("n_steps", n_steps, low=0)
        rows = self._rows
        lr0 = self.lr if frozen is None else torch.where(frozen, 0.0, self.lr)
        decay = None if bool((self.gamma == 1).all()) else self.gamma
        flat = rows * self.symbols.shape[1]
        symbols, states = self.symbols.flatten(), self.states.flatten()
        for _ in range(n_steps):
            p = self.pos
            at = flat + p
            x, tgt = self._eye[symbols[at]][:, None], self._sets[states[at]][:, None]  # (N, 1, 7)
            lr = lr0 if decay is None else lr0 * decay ** self.run_len
            y, self.state = self.net.online_step(x, tgt, self.state, lr)
            ok = correct(y, tgt)[:, 0]
            stop = ~ok | (self.run_len + 1 >= self.max_stream)
            if bool(stop.any()):
                for n in torch.nonzero(stop).flatten().tolist():
                    self.ended.append((self.step, n, int(self.run_len[n]) + int(ok[n])))
                _reset(self.state, stop[:, None])
            self.run_len = torch.where(stop, 0, self.run_len + 1)
            nxt = torch.where(stop, self.next_start.flatten()[at], p + 1)  # a new stream begins at the next string
            self.pos = torch.where(nxt >= self.end, 0, nxt)
            self.step += 1


def bench_cell(device="cpu", repeats=10, T=100, batch=32, n_in=32, blocks=64) -> dict:
    """Forward + backward (autograd through time) of ``ExtendedLSTM`` (one cell per block) against
    ``nn.LSTM`` of the same sizes on a (T, batch, n_in) sequence. Returns {"ours_ms", "theirs_ms",
    "ratio", "name"}: medians over ``repeats`` after 2 warm-ups, alternating the two sides
    (:func:`common.bench.time_forward_backward`); ratio = ours / theirs."""
    from common.bench import time_forward_backward

    check_int("repeats", repeats, low=1)
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(T, batch, n_in, generator=g).to(device)
    ours = ExtendedLSTM(1, blocks, 1, n_in, 1, generator=g).to(device)
    theirs = nn.LSTM(n_in, blocks).to(device)

    t_ours, t_theirs = time_forward_backward(lambda v: ours(v[:, None])[1]["y"], lambda v: theirs(v)[0], x,
                                             device=device, repeats=repeats, warmup=2)
    return {"ours_ms": t_ours, "theirs_ms": t_theirs, "ratio": t_ours / t_theirs,
            "name": f"LSTM cell fwd+bwd, T={T}, batch {batch}, {n_in}->{blocks}"}
