"""U-Net (Ronneberger, Fischer, Brox, MICCAI 2015), written from tensor operations.

Contents, in the paper's order:
- :class:`UNet`: contracting path, expanding path, skip concatenation (Sec. 2, Fig. 1);
  ``skips=False`` gives the same network without the skips, for the ablation.
- :func:`border_weight_map` and :func:`weighted_cross_entropy`: the pixel-wise loss with the
  weight map that forces thin borders between touching cells (Sec. 3, Eqs. 1-2).
- :func:`augment`: flips, 90-degree turns and the elastic deformation of Sec. 3.1.
- :func:`make_cells`: a generated cell-like data set (touching blobs, noise, blur, uneven
  light), with instance masks, standing in for the paper's microscopy images.
- :func:`foreground_iou`, :func:`connected_components`, :func:`seg_score`, :func:`separated_fraction`:
  metrics, pixel-level (IoU) and object-level (a SEG-like matched-cell Jaccard index, as the ISBI cell
  tracking challenge scores segmentations).

Argument checks come from :mod:`common.checks`; an empty batch raises ``ValueError`` everywhere.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from common.checks import check_float, check_images, check_int, check_probability, check_tensor


def _double_conv(cin: int, cout: int, batch_norm: bool) -> nn.Sequential:
    """Two 3x3 convolutions, each followed by a ReLU (Sec. 2). 'Same' padding keeps the size;
    the paper used unpadded ('valid') convolutions and cropped the skip features instead."""
    layers: list[nn.Module] = []
    for c in (cin, cout):
        layers += [nn.Conv2d(c, cout, 3, padding=1, bias=not batch_norm)]
        layers += [nn.BatchNorm2d(cout)] if batch_norm else []
        layers += [nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """The U-shaped network of Fig. 1: ``depth`` poolings down, ``depth`` up-convolutions up.

    Level i of the contracting path has ``base_width * 2**i`` channels (the paper: depth 4,
    base width 64, 23 conv layers). Each expanding step up-samples with a 2x2 transposed
    convolution that halves the channels, concatenates the contracting path's feature map of the
    same level (the skip), and applies two 3x3 convolutions. A final 1x1 convolution maps to
    ``num_classes`` scores per pixel. With ``skips=False`` nothing is concatenated: the same
    layers (half the input channels in each decoder block) see only the up-sampled features.
    ``dropout`` acts at the end of the contracting path, as in the paper; ``batch_norm`` is a
    later addition (not in the paper), off by default. Input: float ``(B, in_channels, H, W)``, B >= 1,
    with H and W positive multiples of ``2**depth``; output: logits ``(B, num_classes, H, W)``.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, depth: int = 4, base_width: int = 64,
                 skips: bool = True, dropout: float = 0.0, batch_norm: bool = False):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("depth", depth), ("base_width", base_width)):
            check_int(name, v, low=1)
        check_int("num_classes", num_classes, low=2)
        check_probability("dropout", dropout)
        self.in_channels, self.depth, self.skips = in_channels, depth, skips
        widths = [base_width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList(
            _double_conv(in_channels if i == 0 else widths[i - 1], widths[i], batch_norm) for i in range(depth))
        self.bottom = _double_conv(widths[depth - 1], widths[depth], batch_norm)
        self.drop = nn.Dropout2d(dropout)
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2)
                                for i in reversed(range(depth)))
        self.dec = nn.ModuleList(_double_conv(widths[i] * (2 if skips else 1), widths[i], batch_norm)
                                 for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], num_classes, 1)
        for m in self.modules():  # Sec. 3: Gaussian init with std sqrt(2/N), N = incoming nodes
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                k = m.kernel_size[0] * m.kernel_size[1]
                n = m.in_channels * (k if isinstance(m, nn.Conv2d) else k // (m.stride[0] * m.stride[1]))
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes, H, W)`` for images ``(B, in_channels, H, W)``; ValueError on a wrong
        rank, dtype or channel count, an empty batch, or a size that is not a positive multiple of
        ``2**depth`` (0x0 included)."""
        m = 2**self.depth
        check_images("UNet", x, channels=self.in_channels, min_size=m)
        if x.shape[2] % m or x.shape[3] % m:
            raise ValueError(f"UNet: H and W must be divisible by 2**depth = {m}, got {x.shape[2]}x{x.shape[3]}")
        feats = []
        for block in self.down:  # contracting path
            x = block(x)  # (B, C_i, H_i, W_i)
            feats.append(x)
            x = F.max_pool2d(x, 2)  # (B, C_i, H_i/2, W_i/2)
        x = self.drop(self.bottom(x))  # (B, C_depth, H/2^depth, W/2^depth)
        for up, block, skip in zip(self.up, self.dec, reversed(feats)):  # expanding path
            x = up(x)  # (B, C_i, H_i, W_i)
            x = block(torch.cat([skip, x], 1) if self.skips else x)  # (B, C_i, H_i, W_i)
        return self.head(x)  # (B, num_classes, H, W)


def class_weights(labels: torch.Tensor, num_classes: int = 2) -> torch.Tensor:
    """The class-balancing part w_c of Eq. 2, one weight per class ``(K,)``: inverse class
    frequency in ``labels`` (integer class indices of any shape), scaled so the most frequent class
    gets 1 (absent classes get 1). ValueError for no labels or labels outside ``[0, num_classes)``."""
    check_int("num_classes", num_classes, low=1)
    check_tensor("labels", labels, integer=True, nonempty=False)
    if labels.numel() == 0:
        raise ValueError(f"class_weights: labels is empty (shape {tuple(labels.shape)}); nothing to count")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"class_weights: labels must lie in [0, {num_classes}), got values from {lo} to {hi}")
    counts = torch.bincount(labels.flatten(), minlength=num_classes).double()  # (K,)
    w = counts.max() / counts.clamp(min=1)
    return torch.where(counts > 0, w, torch.ones_like(w)).float()


def border_weight_map(instances: torch.Tensor, w0: float = 10.0, sigma: float = 5.0,
                      class_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 2: w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2)).

    ``instances``: int64 ``(B, H, W)``, 0 = background, k > 0 = cell k. d1 and d2 are the
    Euclidean distances to the nearest and the second-nearest cell (0 inside a cell for that
    cell), found by brute force against each cell's boundary pixels (the nearest pixel of a set
    seen from outside it always lies on its boundary). With fewer than two cells d2 is infinite
    and the border term vanishes. ``class_weight`` ``(2,)`` gives w_c for background/foreground
    (default: ones; any other length is a ValueError). Returns float32 ``(B, H, W)``, so w >= w_c
    everywhere.
    """
    check_tensor("instances", instances, dim=3, integer=True)
    if instances.numel() and int(instances.min()) < 0:
        raise ValueError(f"instances must be >= 0 (0 = background, k > 0 = cell k), got {int(instances.min())}")
    check_float("w0", w0, low=0.0)
    check_float("sigma", sigma, low=0.0, low_open=True)
    if class_weight is not None and (not isinstance(class_weight, torch.Tensor) or class_weight.shape != (2,)):
        got = tuple(class_weight.shape) if isinstance(class_weight, torch.Tensor) else type(class_weight).__name__
        raise ValueError(f"class_weight must be a tensor of shape (2,) (background, foreground), got {got}")
    B, H, W = instances.shape
    wc = torch.ones(2) if class_weight is None else class_weight.float().cpu()
    out = wc[(instances > 0).long()].clone()  # (B, H, W) the w_c(x) term
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    coords = torch.stack([yy.flatten(), xx.flatten()], 1).float()  # (HW, 2)
    for b in range(B):
        ids, inv = torch.unique(instances[b], return_inverse=True)  # inv: (H, W) index into ids
        cells = ids > 0
        if cells.sum() < 2:
            continue
        pad = F.pad(instances[b][None, None].float(), (1, 1, 1, 1), value=-1)[0, 0]  # (H+2, W+2)
        inner = instances[b].float()
        edge = sum(pad[1 + dy:H + 1 + dy, 1 + dx:W + 1 + dx] != inner for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)))
        edge = ((edge > 0) & (instances[b] > 0)).flatten()  # (HW,) boundary pixels of the cells
        d = torch.cdist(coords, coords[edge])  # (HW, E)
        cell_of_edge = inv.flatten()[edge]  # (E,)
        dist = torch.full((H * W, len(ids)), math.inf).scatter_reduce(
            1, cell_of_edge.expand(H * W, -1), d, reduce="amin")  # (HW, n_ids) distance to each cell
        dist[torch.arange(H * W), inv.flatten()] = 0.0  # inside its own cell
        dist = dist[:, cells].sort(1).values  # (HW, n_cells)
        d1, d2 = dist[:, 0], dist[:, 1]
        out[b] += (w0 * torch.exp(-((d1 + d2) ** 2) / (2 * sigma**2))).view(H, W)
    return out


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 1: the energy E = -sum_x w(x) log p_{l(x)}(x), with the pixel-wise soft-max
    p_k(x) = exp(a_k(x)) / sum_k' exp(a_k'(x)), averaged over the B*H*W pixels (so with w = 1
    it equals ``F.cross_entropy``). logits ``(B, K, H, W)``, target int64 ``(B, H, W)`` with classes in
    ``[0, K)`` (ValueError otherwise: one host sync per call), weight ``(B, H, W)`` or None."""
    check_tensor("logits", logits, dim=4, floating=True)
    want = tuple(logits.shape[:1] + logits.shape[2:])
    if target.dtype != torch.int64 or tuple(target.shape) != want:
        raise ValueError(f"target must be int64 {want}, got {target.dtype} {tuple(target.shape)}")
    K = logits.shape[1]
    if not bool(((target >= 0) & (target < K)).all()):
        raise ValueError(f"target classes must lie in [0, {K}), got values from {int(target.min())} to {int(target.max())}")
    if weight is not None and tuple(weight.shape) != want:
        raise ValueError(f"weight must have shape {want}, got {tuple(weight.shape)}")
    nll = -F.log_softmax(logits, 1).gather(1, target.unsqueeze(1)).squeeze(1)  # (B, H, W)
    return nll.mean() if weight is None else (weight * nll).mean()


def augment(image: torch.Tensor, *maps: torch.Tensor, elastic_std: float = 2.0, grid: int = 3,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
    """Sec. 3.1 augmentation, a fresh draw per sample: random flips, 90-degree turns, and an
    elastic deformation from random displacements on a coarse ``grid x grid`` grid (std
    ``elastic_std`` pixels; paper: 3x3, 10 px on 572 px tiles) interpolated bicubically.
    ``image`` float ``(B, C, H, W)``, B >= 1, square and at least 2x2, is resampled bicubically; each
    of ``maps`` ``(B, H, W)`` (labels, weights) by nearest neighbour, so labels stay labels. ``grid``
    >= 1 (1: a random shift), ``elastic_std`` >= 0 (0: no deformation). Returns (image, *maps)."""
    check_images("augment", image, min_size=2)
    check_float("elastic_std", elastic_std, low=0.0)
    check_int("grid", grid, low=1)
    B, _, H, W = image.shape
    if H != W:
        raise ValueError(f"augment: 90-degree turns need square images, got {H}x{W}")
    for m in maps:
        if not isinstance(m, torch.Tensor) or tuple(m.shape) != (B, H, W):
            raise ValueError(f"augment: each map must have shape {(B, H, W)}, got "
                             f"{tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__}")
    g = dict(generator=generator, device="cpu")
    stack = torch.cat([image] + [m.unsqueeze(1).to(image.dtype) for m in maps], 1)  # (B, C+M, H, W)
    flip, turns = torch.rand(B, **g) < 0.5, torch.randint(0, 4, (B,), **g)
    stack = torch.stack([torch.rot90(s.flip(-1) if f else s, int(k), (-2, -1)) for s, f, k in zip(stack, flip, turns)])
    if elastic_std > 0:
        disp = torch.randn(B, 2, grid, grid, **g).to(image) * elastic_std  # (B, 2, g, g) in pixels
        disp = F.interpolate(disp, size=(H, W), mode="bicubic", align_corners=True)  # (B, 2, H, W)
        ys, xs = torch.meshgrid(torch.arange(H).to(image), torch.arange(W).to(image), indexing="ij")
        gx = (xs + disp[:, 0]) * 2 / (W - 1) - 1  # grid_sample wants x, y in [-1, 1]
        gy = (ys + disp[:, 1]) * 2 / (H - 1) - 1
        flow = torch.stack([gx, gy], -1)  # (B, H, W, 2)
        c = image.shape[1]
        img = F.grid_sample(stack[:, :c], flow, mode="bicubic", padding_mode="reflection", align_corners=True)
        rest = F.grid_sample(stack[:, c:], flow, mode="nearest", padding_mode="reflection", align_corners=True)
        stack = torch.cat([img, rest], 1)
    c = image.shape[1]
    return (stack[:, :c].contiguous(),) + tuple(stack[:, c + i].to(m.dtype) for i, m in enumerate(maps))


def make_cells(n: int, size: int = 64, seed: int = 0, cells: tuple[int, int] = (3, 8), touch: float = 0.6,
               noise: float = 0.06) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Generate ``n`` cell-like images: ellipses of varying size, shape and brightness, many
    placed to touch or overlap a neighbour (probability ``touch``), each brighter in its middle
    so touching cells meet in a faint valley; plus unlabelled debris, uneven illumination,
    Gaussian blur and noise. Overlaps are split by the nearer ellipse; touching cells are then
    separated by a background border (pixels next to another cell), as in the paper's labels.
    Deterministic for a given ``seed``. Returns images float32 ``(n, 1, size, size)``,
    labels int64 ``(n, size, size)`` in {0, 1}, instances int64 ``(n, size, size)`` (0 =
    background, cells numbered from 1)."""
    check_int("n", n, low=1)
    check_int("size", size, low=8)
    if len(cells) != 2 or not 1 <= check_int("cells[0]", cells[0]) <= check_int("cells[1]", cells[1]):
        raise ValueError(f"cells must be (min, max) with 1 <= min <= max, got {cells}")
    check_probability("touch", touch, allow_one=True)
    check_float("noise", noise, low=0.0)
    g = torch.Generator().manual_seed(seed)
    u = lambda lo, hi, k=1: lo + (hi - lo) * torch.rand(k, generator=g)  # noqa: E731
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    t = torch.arange(-3, 4).float()
    blur = torch.exp(-(t**2) / 2.0)
    blur = (blur / blur.sum()).view(1, 1, 1, 7)
    images, instances = [], []
    for _ in range(n):
        k = int(torch.randint(cells[0], cells[1] + 1, (1,), generator=g))
        a, b = u(0.10, 0.20, k) * size, u(0.09, 0.16, k) * size  # semi-axes (k,)
        theta, bright = u(0, math.pi, k), u(0.45, 1.0, k)
        cy, cx, r = u(0, size, k), u(0, size, k), (a + b) / 2
        for i in range(1, k):  # many cells lean on an earlier one, overlapping it a little
            for _ in range(10):  # a few tries to find a spot that does not bury a third cell
                j, ang = int(torch.randint(0, i, (1,), generator=g)), float(u(0, 2 * math.pi))
                d = (r[i] + r[j]) * float(u(0.85, 1.0))
                y, x = (cy[j] + d * math.sin(ang), cx[j] + d * math.cos(ang)) if float(u(0, 1)) < touch \
                    else (u(0, size), u(0, size))
                if bool((torch.hypot(cy[:i] - y, cx[:i] - x) >= 0.8 * (r[:i] + r[i])).all()):
                    cy[i], cx[i] = y, x
                    break
        dy, dx = yy - cy.view(k, 1, 1), xx - cx.view(k, 1, 1)  # (k, H, W)
        c, s = torch.cos(theta).view(k, 1, 1), torch.sin(theta).view(k, 1, 1)
        rho = ((c * dx + s * dy) / a.view(k, 1, 1)) ** 2 + ((c * dy - s * dx) / b.view(k, 1, 1)) ** 2
        rmin, owner = rho.min(0)  # (H, W) the nearer ellipse owns an overlap
        inst = torch.where(rmin < 1, owner + 1, torch.zeros_like(owner))  # (H, W)
        pad = F.pad(inst[None, None].float(), (1, 1, 1, 1))[0, 0]
        other = torch.zeros(size, size, dtype=torch.bool)
        for oy in (-1, 0, 1):
            for ox in (-1, 0, 1):
                nb = pad[1 + oy:size + 1 + oy, 1 + ox:size + 1 + ox]
                other |= (nb > 0) & (nb != inst.float())
        instances.append(torch.where(other, torch.zeros_like(inst), inst))  # thin border between cells
        body = bright.view(k, 1, 1) * (1 - 0.55 * rho) * (rho < 1)  # (k, H, W) dimmer towards the rim
        img = 0.12 + body.max(0).values
        for _ in range(int(torch.randint(2, 7, (1,), generator=g))):  # debris: small dim specks
            py, px, pr = float(u(0, size)), float(u(0, size)), float(u(0.8, 2.0))
            img = img + float(u(0.15, 0.35)) * torch.exp(-((yy - py) ** 2 + (xx - px) ** 2) / (2 * pr**2))
        gy, gx = u(-0.3, 0.3), u(-0.3, 0.3)  # uneven illumination: a random linear ramp
        img = img * (1 + gy * (yy / size - 0.5) + gx * (xx / size - 0.5))
        img = F.conv2d(F.pad(img[None, None], (3, 3, 0, 0), mode="replicate"), blur)
        img = F.conv2d(F.pad(img, (0, 0, 3, 3), mode="replicate"), blur.transpose(2, 3))[0]  # (1, H, W)
        images.append(img + noise * torch.randn(1, size, size, generator=g))
    inst = torch.stack(instances).long()
    return torch.stack(images).float(), (inst > 0).long(), inst


def _pair(name: str, a: torch.Tensor, b: torch.Tensor) -> None:
    check_tensor(f"{name}: first map", a, dim=3, integer=True)
    check_tensor(f"{name}: second map", b, dim=3, integer=True)
    if a.shape != b.shape:
        raise ValueError(f"{name}: need two (B, H, W) maps of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def foreground_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Intersection over union of the foreground (label 1), per image ``(B,)``, from int
    label maps ``(B, H, W)``; an image with an empty union scores 1."""
    _pair("foreground_iou", pred, target)
    p, t = pred == 1, target == 1
    inter, union = (p & t).sum((1, 2)).float(), (p | t).sum((1, 2)).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def connected_components(mask: torch.Tensor) -> torch.Tensor:
    """4-connected components of a boolean ``(B, H, W)`` mask by label propagation (each pixel
    takes the largest label among its 4-neighbours until nothing changes). Returns int64
    ``(B, H, W)``: 0 off the mask, one distinct positive id per component."""
    check_tensor("mask", mask, dim=3)
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool (B, H, W), got {mask.dtype}")
    B, H, W = mask.shape
    lab = torch.arange(1, H * W + 1, dtype=torch.float32, device=mask.device).view(1, 1, H, W).expand(B, 1, H, W) * mask[:, None]
    while True:
        new = torch.maximum(F.max_pool2d(lab, (3, 1), 1, (1, 0)), F.max_pool2d(lab, (1, 3), 1, (0, 1))) * mask[:, None]
        if torch.equal(new, lab):
            return lab[:, 0].long()
        lab = new


def _overlaps(pred: torch.Tensor, truth: torch.Tensor):
    """For each image of two instance maps ``(B, H, W)`` (0 = background): the pixel counts
    ``(n_true, n_pred)`` of each true cell's overlap with each predicted object, the true cells'
    sizes ``(n_true,)`` and the predicted objects' sizes ``(n_pred,)``."""
    for c, t in zip(pred, truth):
        cids, ci = torch.unique(c, return_inverse=True)
        tids, ti = torch.unique(t, return_inverse=True)
        nc, nt = len(cids), len(tids)
        inter = torch.bincount((ti * nc + ci).flatten(), minlength=nt * nc).view(nt, nc).float()  # with background
        yield inter[tids > 0][:, cids > 0], inter.sum(1)[tids > 0], inter.sum(0)[cids > 0]


def seg_score(pred: torch.Tensor, instances: torch.Tensor) -> float:
    """An object-level score after the ISBI cell tracking challenge's SEG measure: each true cell R of
    ``instances`` (int ``(B, H, W)``, 0 = background, k > 0 = cell k) is matched with the predicted
    object S of ``pred`` (int ``(B, H, W)``, same convention; e.g. ``connected_components`` of a
    predicted foreground) that covers more than half of it, |R & S| > |R| / 2 (at most one can),
    and scores the Jaccard index |R & S| / |R | S|, or 0 when no object covers half of it. Returns the
    mean over all true cells of the batch. Merged neighbours, split, missed or bloated cells all
    lower it; extra predicted objects do not. ValueError when ``instances`` holds no cell."""
    _pair("seg_score", pred, instances)
    scores = []
    for inter, size_t, size_p in _overlaps(pred, instances):
        if inter.shape[1] == 0:
            scores.append(torch.zeros_like(size_t))  # no predicted object: every cell scores 0
            continue
        best, j = inter.max(1)  # (n_true,) the object covering most of each true cell
        jac = best / (size_t + size_p[j] - best)
        scores.append(torch.where(best > size_t / 2, jac, torch.zeros_like(jac)))
    scores = torch.cat(scores)
    if scores.numel() == 0:
        raise ValueError("seg_score: instances holds no cells (all background); the score is undefined")
    return scores.mean().item()


def separated_fraction(pred: torch.Tensor, instances: torch.Tensor, threshold: float = 0.5) -> float:
    """Fraction of true cells ``instances`` (B, H, W) matched by one connected component of the
    predicted foreground ``pred`` (label map, B, H, W) with IoU > ``threshold``: cells merged with a
    neighbour, split or missed do not count. Measures the separation of touching cells."""
    _pair("separated_fraction", pred, instances)
    check_float("threshold", threshold, 0.0, 1.0)
    found = total = 0
    for inter, size_t, size_p in _overlaps(connected_components(pred == 1), instances):
        iou = inter / (size_t[:, None] + size_p[None, :] - inter)  # (n_true, n_pred)
        found += int((iou > threshold).any(1).sum())
        total += len(size_t)
    return found / max(total, 1)
