"""Tests for 01-deep-neural-networks/04-u-net/unet.py (Ronneberger, Fischer, Brox 2015)."""

import math

import pytest
import torch
import torch.nn.functional as F

import common

unet = common.topic("unet")


# ---------------------------------------------------------------- the network

@pytest.mark.parametrize("depth,size,width,skips", [(1, 8, 4, True), (2, 12, 4, False), (3, 16, 8, True),
                                                    (3, 24, 4, False), (4, 32, 2, True)])
def test_output_shape_equals_input_shape(depth, size, width, skips):
    net = unet.UNet(in_channels=3, num_classes=4, depth=depth, base_width=width, skips=skips)
    x = torch.randn(2, 3, size, 2 * size)
    assert net(x).shape == (2, 4, size, 2 * size)


def test_paper_configuration_has_23_convolutions_and_known_size():
    net = unet.UNet(in_channels=1, num_classes=2, depth=4, base_width=64)
    convs = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert len(convs) == 23  # Sec. 2: "In total the network has 23 convolutional layers."
    conv3 = lambda i, o: 9 * i * o + o  # noqa: E731
    widths = [64, 128, 256, 512, 1024]
    down = conv3(1, 64) + conv3(64, 64) + sum(conv3(a, b) + conv3(b, b) for a, b in zip(widths, widths[1:]))
    up = sum(4 * b * a + a + conv3(2 * a, a) + conv3(a, a) for a, b in zip(widths, widths[1:]))
    assert sum(p.numel() for p in net.parameters()) == down + up + 64 * 2 + 2 == 31_030_658


def test_no_skip_variant_only_halves_decoder_inputs():
    a = unet.UNet(1, 2, depth=3, base_width=8, skips=True)
    b = unet.UNet(1, 2, depth=3, base_width=8, skips=False)
    for da, db in zip(a.dec, b.dec):
        assert da[0].in_channels == 2 * db[0].in_channels and da[0].out_channels == db[0].out_channels
    assert [p.shape for p in a.down.parameters()] == [p.shape for p in b.down.parameters()]


def test_batch_norm_and_dropout_options():
    torch.manual_seed(0)
    net = unet.UNet(1, 2, depth=2, base_width=4, batch_norm=True, dropout=0.5)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == 10  # one per 3x3 conv
    x = torch.randn(2, 1, 8, 8)
    assert not torch.equal(net(x), net(x))  # dropout at the end of the contracting path is active in training
    net.eval()
    assert torch.equal(net(x), net(x)) and net(x).shape == (2, 2, 8, 8)


def test_init_follows_paper_std():
    torch.manual_seed(0)
    net = unet.UNet(1, 2, depth=2, base_width=32)
    conv = net.down[1][2]  # second conv of level 1: 64 -> 64 channels, 3x3
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 64)), rel=0.05)
    assert torch.all(conv.bias == 0)


@pytest.mark.parametrize("shape,match", [((1, 1, 12, 16), "divisible by 2\\*\\*depth = 8"),
                                         ((1, 1, 16, 20), "divisible"),
                                         ((1, 2, 16, 16), "expects 1 input channels, got 2"),
                                         ((1, 16, 16), "expects images"),
                                         ((2, 1, 1, 16, 16), "expects images"),
                                         ((0, 1, 16, 16), "empty batch"),
                                         ((1, 1, 0, 0), "at least 8x8"),
                                         ((1, 1, 16, 0), "at least 8x8")])
def test_bad_inputs_raise(shape, match):
    net = unet.UNet(1, 2, depth=3, base_width=2)
    with pytest.raises(ValueError, match=match):
        net(torch.zeros(shape))


def test_integer_input_raises():
    with pytest.raises(ValueError, match="floating point"):
        unet.UNet(1, 2, depth=1, base_width=2)(torch.zeros(1, 1, 4, 4, dtype=torch.long))


@pytest.mark.parametrize("kwargs,match", [(dict(depth=0), "depth"), (dict(base_width=0), "base_width"),
                                          (dict(num_classes=1), "num_classes"), (dict(dropout=1.0), "dropout"),
                                          (dict(in_channels=1.5), "in_channels"), (dict(dropout=-0.1), "dropout")])
def test_bad_hyperparameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        unet.UNet(**kwargs)


# ---------------------------------------------------------------- loss and weight map

@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_weighted_cross_entropy_matches_torch(dtype, tol):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 6, generator=g, dtype=dtype, requires_grad=True)
    target = torch.randint(0, 3, (2, 5, 6), generator=g)
    ones = torch.ones(2, 5, 6, dtype=dtype)
    ref = F.cross_entropy(logits, target)
    for w in (None, ones):
        assert abs(unet.weighted_cross_entropy(logits, target, w).item() - ref.item()) < tol
    w = torch.rand(2, 5, 6, generator=g, dtype=dtype) * 5
    ours = unet.weighted_cross_entropy(logits, target, w)
    ref = (F.cross_entropy(logits, target, reduction="none") * w).mean()
    assert abs(ours.item() - ref.item()) < tol
    (ga,), (gb,) = torch.autograd.grad(ours, logits), torch.autograd.grad(ref, logits)
    assert (ga - gb).abs().max().item() < tol


def test_weighted_cross_entropy_bad_inputs():
    logits = torch.zeros(2, 2, 4, 4)
    with pytest.raises(ValueError, match="int64"):
        unet.weighted_cross_entropy(logits, torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="target must be"):
        unet.weighted_cross_entropy(logits, torch.zeros(2, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="weight must have shape"):
        unet.weighted_cross_entropy(logits, torch.zeros(2, 4, 4, dtype=torch.long), torch.ones(2, 4))
    with pytest.raises(ValueError, match="logits must have rank 4"):
        unet.weighted_cross_entropy(torch.zeros(2, 2, 4), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="empty batch"):
        unet.weighted_cross_entropy(torch.zeros(0, 2, 4, 4), torch.zeros(0, 4, 4, dtype=torch.long))


@pytest.mark.parametrize("bad", [2, 5, -1])
def test_weighted_cross_entropy_out_of_range_target_raises(bad):
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    target[1, 2, 3] = bad  # two classes: only 0 and 1 are valid (was a gather error, or silent for -1)
    with pytest.raises(ValueError, match=r"target classes must lie in \[0, 2\)"):
        unet.weighted_cross_entropy(torch.zeros(2, 2, 4, 4), target)


def test_weighted_cross_entropy_random_shape_parity():
    g = torch.Generator().manual_seed(11)
    for _ in range(6):
        B, K, H, W = (int(v) for v in torch.randint(1, 6, (4,), generator=g))
        K += 1
        dtype = (torch.float32, torch.float64)[int(torch.randint(0, 2, (1,), generator=g))]
        logits = torch.randn(B, K, H, W, generator=g, dtype=dtype) * 5
        target = torch.randint(0, K, (B, H, W), generator=g)
        w = torch.rand(B, H, W, generator=g, dtype=dtype) * 3
        ref = (F.cross_entropy(logits, target, reduction="none") * w).mean()
        tol = 1e-5 if dtype == torch.float32 else 1e-10
        assert abs(unet.weighted_cross_entropy(logits, target, w).item() - ref.item()) < tol, (B, K, H, W, dtype)


def test_class_weights_balance_frequencies():
    labels = torch.tensor([[0, 0, 0, 1], [0, 0, 0, 0]])  # 7 background, 1 foreground
    w = unet.class_weights(labels)
    assert torch.allclose(w, torch.tensor([1.0, 7.0]))
    assert torch.allclose(unet.class_weights(torch.zeros(3, 3, dtype=torch.long)), torch.ones(2))
    # three classes, class 1 absent: 1 background, 3 of class 2 -> [3, 1 (absent), 1]
    assert torch.allclose(unet.class_weights(torch.tensor([0, 2, 2, 2]), 3), torch.tensor([3.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="integers"):
        unet.class_weights(labels.float())
    with pytest.raises(ValueError, match="labels must lie"):
        unet.class_weights(labels * 2)


@pytest.mark.parametrize("labels,match", [(torch.tensor([0, -1, 1]), r"from -1 to 1"),  # bincount's error before
                                          (torch.zeros(0, dtype=torch.long), "empty"),  # max()'s error before
                                          (torch.zeros(2, 0, 5, dtype=torch.long), "empty")])
def test_class_weights_negative_or_empty_labels_raise(labels, match):
    with pytest.raises(ValueError, match=match):
        unet.class_weights(labels)


def _two_cells(gap: int) -> torch.Tensor:
    inst = torch.zeros(1, 20, 30, dtype=torch.long)
    inst[0, 5:15, 2:10] = 3
    inst[0, 5:15, 10 + gap:18 + gap] = 7
    return inst


def test_weight_map_is_high_in_the_gap_between_close_cells():
    wc = torch.tensor([1.0, 2.0])
    w = unet.border_weight_map(_two_cells(2), w0=10.0, sigma=5.0, class_weight=wc)
    assert w.shape == (1, 20, 30) and w.dtype == torch.float32
    # column 10 is 1 px from the left cell (col 9) and 2 px from the right one (col 12)
    assert w[0, 10, 10].item() == pytest.approx(1 + 10 * math.exp(-(1 + 2) ** 2 / 50), rel=1e-5)
    assert w[0, 10, 10] > 5 * w[0, 10, 27]  # far from the pair the border term has faded
    wide = unet.border_weight_map(_two_cells(8), class_weight=wc)
    assert w[0, 10, 10] > wide[0, 10, 13]  # a wider gap gets less weight


def test_weight_map_at_least_class_weight_and_vanishes_for_one_cell():
    _, labels, inst = unet.make_cells(3, 32, seed=1)
    wc = unet.class_weights(labels)
    w = unet.border_weight_map(inst, class_weight=wc)
    assert w.shape == inst.shape
    assert torch.all(w >= wc[labels] - 1e-6)
    assert torch.all(w <= wc[labels] + 10.0 + 1e-5)
    one = torch.zeros(1, 10, 10, dtype=torch.long)
    one[0, 2:5, 2:5] = 1
    assert torch.equal(unet.border_weight_map(one), torch.ones(1, 10, 10))
    assert torch.equal(unet.border_weight_map(torch.zeros(1, 6, 6, dtype=torch.long)), torch.ones(1, 6, 6))


def test_weight_map_matches_brute_force_distances():
    g = torch.Generator().manual_seed(3)
    inst = torch.randint(0, 4, (1, 9, 11), generator=g)  # scattered cells, ids 1..3
    w = unet.border_weight_map(inst, w0=10.0, sigma=5.0)
    H, W = inst.shape[1:]
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    pts = torch.stack([yy.flatten(), xx.flatten()], 1).double()
    d = torch.stack([torch.cdist(pts, pts[inst[0].flatten() == k]).min(1).values for k in (1, 2, 3)], 1)
    d = d.sort(1).values
    ref = 1 + 10 * torch.exp(-((d[:, 0] + d[:, 1]) ** 2) / 50)
    assert (w[0].flatten().double() - ref).abs().max().item() < 1e-5


def test_weight_map_bad_inputs():
    with pytest.raises(ValueError, match="integers"):
        unet.border_weight_map(torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="sigma"):
        unet.border_weight_map(torch.zeros(1, 4, 4, dtype=torch.long), sigma=0.0)
    with pytest.raises(ValueError, match="w0"):
        unet.border_weight_map(torch.zeros(1, 4, 4, dtype=torch.long), w0=-1.0)
    with pytest.raises(ValueError, match=">= 0"):
        unet.border_weight_map(-torch.ones(1, 4, 4, dtype=torch.long))


@pytest.mark.parametrize("wc", [torch.ones(3), torch.ones(1), torch.ones(2, 1), [1.0, 2.0]])
def test_weight_map_class_weight_of_wrong_length_raises(wc):
    # length 3 was silently accepted (its last entry unused), length 1 gave an IndexError
    with pytest.raises(ValueError, match=r"class_weight must be a tensor of shape \(2,\)"):
        unet.border_weight_map(_two_cells(2), class_weight=wc)


# ---------------------------------------------------------------- data and augmentation

def test_make_cells_shapes_dtypes_and_determinism():
    x, y, inst = unet.make_cells(4, 32, seed=5)
    assert x.shape == (4, 1, 32, 32) and x.dtype == torch.float32
    assert y.shape == inst.shape == (4, 32, 32) and y.dtype == inst.dtype == torch.int64
    assert set(y.unique().tolist()) <= {0, 1} and torch.equal(y, (inst > 0).long())
    x2, y2, inst2 = unet.make_cells(4, 32, seed=5)
    assert torch.equal(x, x2) and torch.equal(inst, inst2)
    x3, _, _ = unet.make_cells(4, 32, seed=6)
    assert not torch.equal(x, x3)
    assert x[:, 0][y == 1].mean() > x[:, 0][y == 0].mean() + 0.2  # cells are brighter than background


def test_make_cells_separates_touching_cells_by_background():
    _, _, inst = unet.make_cells(8, 48, seed=0)
    pad = F.pad(inst, (1, 1, 1, 1))
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            nb = pad[:, 1 + dy:49 + dy, 1 + dx:49 + dx]
            assert not torch.any((inst > 0) & (nb > 0) & (nb != inst))
    # and the generator does make cells that would otherwise touch: many borders exist
    assert unet.border_weight_map(inst[:4]).max() > 5


def test_make_cells_bad_arguments():
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        unet.make_cells(0)
    with pytest.raises(ValueError, match="size"):
        unet.make_cells(1, 4)
    with pytest.raises(ValueError, match="noise"):
        unet.make_cells(1, 16, noise=-0.1)
    with pytest.raises(ValueError, match="cells must be"):
        unet.make_cells(1, 32, cells=(3, 2))


def _dihedral(t):
    return [torch.rot90(s, k, (-2, -1)) for s in (t, t.flip(-1)) for k in range(4)]


def test_augment_without_elastic_is_a_flip_or_turn_of_each_sample():
    x, y, inst = unet.make_cells(6, 16, seed=0)
    w = unet.border_weight_map(inst)
    g = torch.Generator().manual_seed(0)
    xa, ya, wa = unet.augment(x, y, w, elastic_std=0.0, generator=g)
    assert ya.dtype == torch.int64 and wa.dtype == torch.float32
    for i in range(6):
        k = [j for j, t in enumerate(_dihedral(x[i])) if torch.equal(t, xa[i])]
        assert len(k) >= 1
        assert torch.equal(_dihedral(y[i])[k[0]], ya[i]) and torch.equal(_dihedral(w[i])[k[0]], wa[i])


def test_augment_elastic_keeps_labels_aligned_and_is_seeded():
    _, y, _ = unet.make_cells(4, 32, seed=2)
    img = y[:, None].float()  # an image that is its own label
    xa, ya = unet.augment(img, y, elastic_std=2.0, generator=torch.Generator().manual_seed(1))
    assert set(ya.unique().tolist()) <= {0, 1}
    assert ((xa[:, 0] > 0.5).long() == ya).float().mean() > 0.97
    assert not torch.equal(ya, y)
    xb, yb = unet.augment(img, y, elastic_std=2.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_augment_bad_inputs():
    with pytest.raises(ValueError, match="square"):
        unet.augment(torch.zeros(1, 1, 8, 16))
    with pytest.raises(ValueError, match="each map"):
        unet.augment(torch.zeros(2, 1, 8, 8), torch.zeros(2, 8, 7))
    with pytest.raises(ValueError, match="floating point"):
        unet.augment(torch.zeros(2, 1, 8, 8, dtype=torch.long))


@pytest.mark.parametrize("image,kwargs,match", [
    (torch.zeros(0, 1, 8, 8), {}, "empty batch"),  # crashed inside torch before
    (torch.zeros(2, 1, 1, 1), {}, "at least 2x2"),  # gave NaN (division by W - 1 = 0)
    (torch.zeros(2, 1, 8, 8), dict(grid=0), "grid must be an int >= 1"),
    (torch.zeros(2, 1, 8, 8), dict(grid=-3), "grid must be an int >= 1"),
    (torch.zeros(2, 1, 8, 8), dict(elastic_std=-1.0), "elastic_std must be >= 0"),  # was silently no warp
    (torch.zeros(2, 1, 8, 8), dict(elastic_std=float("nan")), "elastic_std must be finite"),
])
def test_augment_bad_arguments_raise(image, kwargs, match):
    with pytest.raises(ValueError, match=match):
        unet.augment(image, **kwargs)


def test_augment_two_pixel_image_and_one_point_grid_stay_finite():
    x = torch.rand(3, 2, 2, 2)
    xa, = unet.augment(x, elastic_std=1.0, generator=torch.Generator().manual_seed(0))
    assert xa.shape == x.shape and torch.isfinite(xa).all()
    xb, = unet.augment(torch.rand(3, 1, 8, 8), grid=1, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(xb).all()


# ---------------------------------------------------------------- metrics

def test_foreground_iou_values():
    t = torch.tensor([[[1, 1, 0, 0]], [[0, 0, 0, 0]]])
    p = torch.tensor([[[1, 0, 1, 0]], [[0, 0, 0, 0]]])
    assert torch.allclose(unet.foreground_iou(p, t), torch.tensor([1 / 3, 1.0]))
    with pytest.raises(ValueError, match="rank 3"):
        unet.foreground_iou(p, t[0])
    with pytest.raises(ValueError, match="one shape"):
        unet.foreground_iou(p, t[:, :, :3])


def test_connected_components_are_4_connected():
    m = torch.zeros(1, 6, 6, dtype=torch.bool)
    m[0, 0:2, 0:2] = True  # a square
    m[0, 2, 2] = True  # touches the square only diagonally
    m[0, 4:6, 0:6] = True  # a bar
    c = unet.connected_components(m)
    assert c.dtype == torch.int64 and torch.all((c > 0) == m)
    assert len(c[m].unique()) == 3
    assert len(c[0, 0:2, 0:2].unique()) == 1 and len(c[0, 4:6].unique()) == 1
    with pytest.raises(ValueError, match="bool"):
        unet.connected_components(m.long())
    with pytest.raises(ValueError, match="empty batch"):
        unet.connected_components(m[:0])


def _cell_map(*boxes, shape=(1, 8, 12)):
    """An instance map with rectangular cells: boxes (image, y0, y1, x0, x1, id)."""
    m = torch.zeros(shape, dtype=torch.long)
    for b, y0, y1, x0, x1, k in boxes:
        m[b, y0:y1, x0:x1] = k
    return m


def test_seg_score_hand_made_cases():
    truth = _cell_map((0, 1, 5, 1, 5, 1), (0, 1, 5, 7, 11, 2))  # two 4x4 cells (16 px), a 2-px gap at cols 5-6
    assert unet.seg_score(truth, truth) == 1.0
    assert unet.seg_score(truth * 5, truth) == 1.0  # ids need not agree, only the objects
    # cell 1 found with 4 extra pixels (J = 16/20), cell 2 missed entirely (0)
    assert unet.seg_score(_cell_map((0, 1, 5, 0, 5, 1)), truth) == pytest.approx((16 / 20 + 0) / 2)
    # cell 1 covered by 9 of 16 px (> half: J = 9/16); cell 2 by exactly 8 of 16 (not > half: 0)
    pred = _cell_map((0, 1, 5, 1, 3, 3), (0, 1, 2, 3, 4, 3), (0, 1, 3, 7, 11, 4))
    assert unet.seg_score(pred, truth) == pytest.approx((9 / 16 + 0) / 2)
    # both cells merged into one object with the gap filled: 40 px, each cell J = 16/40
    merged = _cell_map((0, 1, 5, 1, 11, 1))
    assert unet.seg_score(merged, truth) == pytest.approx(16 / 40)
    # an extra predicted object elsewhere does not lower it
    assert unet.seg_score(merged + _cell_map((0, 6, 8, 0, 2, 9)), truth) == pytest.approx(16 / 40)
    # the mean runs over all cells of the batch: image 0 has two perfect cells, image 1 one missed cell
    truth2 = _cell_map((0, 1, 5, 1, 5, 1), (0, 1, 5, 7, 11, 2), (1, 2, 4, 2, 4, 1), shape=(2, 8, 12))
    pred2 = truth2.clone()
    pred2[1] = 0
    assert unet.seg_score(pred2, truth2) == pytest.approx(2 / 3)
    assert unet.seg_score(unet.connected_components(merged > 0), truth) == pytest.approx(16 / 40)


def test_seg_score_bad_inputs():
    truth = _cell_map((0, 1, 5, 1, 5, 1))
    with pytest.raises(ValueError, match="no cells"):
        unet.seg_score(truth, torch.zeros_like(truth))
    with pytest.raises(ValueError, match="one shape"):
        unet.seg_score(truth[:, :4], truth)
    with pytest.raises(ValueError, match="integers"):
        unet.seg_score(truth.float(), truth)


def test_separated_fraction_counts_merged_cells_as_failures():
    inst = _two_cells(2)
    inst[0, 1:3, 25:28] = 9  # a third, isolated cell
    truth = (inst > 0).long()
    assert unet.separated_fraction(truth, inst) == 1.0
    merged = truth.clone()
    merged[0, 5:15, 10:12] = 1  # fill the gap: two cells become one blob
    assert unet.separated_fraction(merged, inst) == pytest.approx(1 / 3)
    assert unet.separated_fraction(torch.zeros_like(truth), inst) == 0.0


# ---------------------------------------------------------------- learning sanity

def test_overfits_a_tiny_batch():
    torch.manual_seed(0)
    x, y, inst = unet.make_cells(2, 32, seed=0)
    w = unet.border_weight_map(inst, class_weight=unet.class_weights(y))
    x = (x - x.mean()) / x.std()
    net = unet.UNet(1, 2, depth=2, base_width=8)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        loss = unet.weighted_cross_entropy(net(x), y, w)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        iou = unet.foreground_iou(net(x).argmax(1), y).mean().item()
    assert loss.item() < 0.1 * first
    assert iou > 0.95
