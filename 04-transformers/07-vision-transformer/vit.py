"""The Vision Transformer (Dosovitskiy et al. 2020, "An Image is Worth 16x16 Words"), from tensor operations.

An image x (C, H, W) is cut into N = HW / P^2 patches of P x P pixels, each flattened to a vector of
P^2 C numbers and projected to D dimensions by one trainable matrix E; a learnable [class] embedding is
put in front and learned 1-D position embeddings are added (Eq. 1, Sec. 3.1):

    z_0 = [x_class; x_p^1 E; ...; x_p^N E] + E_pos,        E (P^2 C, D), E_pos (N + 1, D)      (1)
    z'_l = MSA(LN(z_{l-1})) + z_{l-1}                        l = 1..L                            (2)
    z_l  = MLP(LN(z'_l)) + z'_l                              l = 1..L                            (3)
    y    = LN(z_L^0)                                         (the [class] token's final state)   (4)

The MLP has two layers with a GELU between them; LayerNorm comes *before* each block (pre-norm). A linear
head maps y to the class logits (the fine-tuning head of Sec. 3.2, initialised to zero).

Contents:
- :func:`patchify`: (B, C, H, W) -> (B, N, C P P), patches in row-major order, each flattened channel first
  (the order of a stride-P convolution's weight, so weights copy to ``torchvision``'s ``conv_proj``).
- :class:`EncoderBlock`: Eqs. (2)-(3) with the multi-head attention of 4.1 (``transformer.py``, verified
  there against ``nn.MultiheadAttention``); parameter names as ``nn.TransformerEncoderLayer``'s, so weights
  load either way.
- :class:`ViT`: Eqs. (1)-(4) plus the head; :func:`vit_b_16` is ViT-B/16 of Table 1 (L 12, D 768, MLP
  3072, 12 heads, 86M parameters); :func:`torchvision_state_dict` renames our weights for
  ``torchvision.models.VisionTransformer``.
- :func:`position_similarity` (Fig. 7, centre) and :func:`attention_rollout` (the attention maps of Fig. 6,
  computed by Attention Rollout as in Appendix D.8).
- :func:`bench_encoder_layer`: our encoder block against ``nn.TransformerEncoderLayer``, forward + backward.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.checks import check_images, check_int, check_probability, check_tensor
from common.topics import topic

tr = topic("transformer")  # 4.1: MultiHeadAttention


def patchify(x, patch_size):
    """Cut images x (B, C, H, W) into (B, N, C * P * P) flattened patches, N = (H / P) (W / P), row-major.

    H and W must be multiples of P (Sec. 3.1: N = HW / P^2).
    """
    check_images("patchify input", x)
    p = check_int("patch_size", patch_size, low=1)
    b, c, h, w = x.shape
    if h % p or w % p:
        raise ValueError(f"image size must be divisible by the patch size {p}, got {h}x{w}")
    x = x.reshape(b, c, h // p, p, w // p, p)  # (B, C, gh, P, gw, P)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), c * p * p)  # (B, N, C P P)


class EncoderBlock(nn.Module):
    """One pre-norm Transformer encoder layer: z' = MSA(LN(z)) + z; z = MLP(LN(z')) + z' (Eqs. 2-3).

    MLP(u) = W_2 GELU(W_1 u + b_1) + b_2 with hidden size ``mlp_dim``. ``dropout`` follows every dense
    layer but the q, k, v projections (Appendix B.1); the attention weights are not dropped. Parameters are
    named as ``nn.TransformerEncoderLayer(norm_first=True, activation="gelu")``'s.
    """

    def __init__(self, dim, heads, mlp_dim, dropout=0.0, eps=1e-6):
        super().__init__()
        check_int("mlp_dim", mlp_dim, low=1)
        check_probability("dropout", dropout)
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=eps), nn.LayerNorm(dim, eps=eps)
        self.self_attn = tr.MultiHeadAttention(dim, heads)
        self.linear1, self.linear2 = nn.Linear(dim, mlp_dim), nn.Linear(mlp_dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, z, need_weights=False):
        """z (B, T, D) -> (B, T, D) [, attention weights (B, h, T, T)]."""
        a, w = self.self_attn(self.norm1(z), need_weights=True)  # MSA(LN(z))
        z = z + self.drop(a)  # Eq. (2)
        u = self.linear2(self.drop(F.gelu(self.linear1(self.norm2(z)))))  # MLP(LN(z'))
        z = z + self.drop(u)  # Eq. (3)
        return (z, w) if need_weights else z


class ViT(nn.Module):
    """Vision Transformer for ``image_size`` x ``image_size`` images with ``in_channels`` channels (Sec. 3.1).

    ``patch_size`` P must divide ``image_size``; the sequence is N + 1 = (image_size / P)^2 + 1 tokens, and
    the position table holds exactly that many rows. ``dim`` D, ``depth`` L, ``heads``, ``mlp_dim`` as in
    Table 1. Initialisation as ``torchvision``'s: E ~ truncated N(0, 1 / (P^2 C)), E_pos ~ N(0, 0.02^2),
    x_class and the head zero.
    """

    def __init__(self, image_size=28, patch_size=7, in_channels=1, num_classes=10, dim=64, depth=4, heads=4,
                 mlp_dim=128, dropout=0.0, eps=1e-6):
        super().__init__()
        for name, val in (("image_size", image_size), ("patch_size", patch_size), ("in_channels", in_channels),
                          ("dim", dim), ("depth", depth)):
            check_int(name, val, low=1)
        check_int("num_classes", num_classes, low=2)
        if image_size % patch_size:
            raise ValueError(f"image_size must be divisible by patch_size (N = HW / P^2), got {image_size} and "
                             f"{patch_size}")
        self.image_size, self.patch_size, self.in_channels = image_size, patch_size, in_channels
        self.grid = image_size // patch_size  # patches per side
        patch_dim = in_channels * patch_size ** 2
        self.proj = nn.Linear(patch_dim, dim)  # E (and a bias), Eq. (1)
        nn.init.trunc_normal_(self.proj.weight, std=patch_dim ** -0.5)
        nn.init.zeros_(self.proj.bias)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))  # x_class
        self.pos_embedding = nn.Parameter(0.02 * torch.randn(1, self.grid ** 2 + 1, dim))  # E_pos
        self.drop = nn.Dropout(check_probability("dropout", dropout))
        self.layers = nn.ModuleList(EncoderBlock(dim, heads, mlp_dim, dropout, eps) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.head = nn.Linear(dim, num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def embed(self, x):
        """z_0 of Eq. (1): images x (B, C, H, W) -> (B, N + 1, D)."""
        check_images("ViT input", x, channels=self.in_channels)
        n_pos = self.pos_embedding.shape[1]
        if x.shape[-1] % self.patch_size or x.shape[-2] % self.patch_size:
            raise ValueError(f"image size must be divisible by the patch size {self.patch_size}, got "
                             f"{tuple(x.shape[-2:])}")
        n = (x.shape[-2] // self.patch_size) * (x.shape[-1] // self.patch_size) + 1
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"expected {self.image_size}x{self.image_size} images (a sequence of {n_pos} tokens, "
                             f"the size of the position table), got {tuple(x.shape[-2:])}: {n} tokens")
        e = self.proj(patchify(x, self.patch_size))  # (B, N, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, D)
        return self.drop(torch.cat([cls, e], 1) + self.pos_embedding)  # (B, N + 1, D)

    def forward(self, x, need_weights=False):
        """Logits (B, num_classes) for images x (B, C, H, W) [, per-layer attention weights (B, h, T, T)]."""
        z, ws = self.embed(x), []
        for layer in self.layers:
            z, w = layer(z, need_weights=True)  # Eqs. (2)-(3)
            ws.append(w)
        y = self.norm(z[:, 0])  # Eq. (4): the [class] token
        return (self.head(y), ws) if need_weights else self.head(y)


def vit_b_16(num_classes=1000, image_size=224):
    """ViT-B/16 (Table 1): 16x16 patches of RGB images, L = 12, D = 768, MLP 3072, 12 heads (86.6M parameters)."""
    return ViT(image_size, 16, 3, num_classes, dim=768, depth=12, heads=12, mlp_dim=3072)


def torchvision_state_dict(model):
    """Our ``ViT``'s weights under ``torchvision.models.VisionTransformer``'s names and shapes.

    E becomes the stride-P convolution ``conv_proj`` (weight (D, C, P, P)); the class token and position
    table keep their values; each block's attention, LayerNorms and MLP are renamed.
    """
    if not isinstance(model, ViT):
        raise ValueError(f"torchvision_state_dict expects a ViT, got {type(model).__name__}")
    p, c = model.patch_size, model.in_channels
    sd = {"class_token": model.cls_token, "conv_proj.weight": model.proj.weight.reshape(-1, c, p, p),
          "conv_proj.bias": model.proj.bias, "encoder.pos_embedding": model.pos_embedding,
          "encoder.ln.weight": model.norm.weight, "encoder.ln.bias": model.norm.bias,
          "heads.head.weight": model.head.weight, "heads.head.bias": model.head.bias}
    names = {"norm1": "ln_1", "norm2": "ln_2", "self_attn": "self_attention", "linear1": "mlp.0",
             "linear2": "mlp.3"}
    for i, layer in enumerate(model.layers):
        for k, v in layer.state_dict().items():
            head, rest = k.split(".", 1)
            sd[f"encoder.layers.encoder_layer_{i}.{names[head]}.{rest}"] = v
    return {k: v.detach().clone() for k, v in sd.items()}


@torch.no_grad()
def position_similarity(model):
    """Cosine similarity of the patches' position embeddings (Fig. 7, centre): (gh, gw, gh, gw).

    Entry [i, j, k, l] compares the embedding of the patch in row i, column j with that of row k,
    column l; the [class] token's row is left out.
    """
    if not isinstance(model, ViT):
        raise ValueError(f"position_similarity expects a ViT, got {type(model).__name__}")
    e = F.normalize(model.pos_embedding[0, 1:].float(), dim=-1)  # (N, D), unit rows
    g = model.grid
    return (e @ e.T).reshape(g, g, g, g)


@torch.no_grad()
def attention_rollout(weights):
    """Attention Rollout (Abnar & Zuidema 2020; the paper's Appendix D.8): where the [class] token looks.

    ``weights``: the per-layer attention list of ``ViT.forward(..., need_weights=True)``, each (B, h, T, T).
    Heads are averaged, the identity is added for the residual path and rows renormalised, and the layers'
    matrices are multiplied. Returns the [class] token's row over the patches, (B, N), each row summing to
    at most 1 (the rest goes to the [class] token itself).
    """
    if not isinstance(weights, (list, tuple)) or not weights:
        raise ValueError(f"expected a non-empty list of attention weights (B, h, T, T), got {type(weights).__name__}")
    shape = None
    for w in weights:
        check_tensor("attention weights (B, h, T, T)", w, dim=4, floating=True)
        if w.shape[-1] != w.shape[-2] or (shape is not None and w.shape != shape):
            raise ValueError(f"every layer's weights must be (B, h, T, T) of one shape, got {tuple(w.shape)}")
        shape = w.shape
    eye = torch.eye(shape[-1], dtype=weights[0].dtype, device=weights[0].device)
    r = eye.expand(shape[0], -1, -1)
    for w in weights:
        a = w.mean(1) + eye  # (B, T, T): average heads, add the residual path
        r = (a / a.sum(-1, keepdim=True)) @ r
    return r[:, 0, 1:]  # (B, N)


def bench_encoder_layer(device="cpu", repeats=20, batch=64, tokens=17, dim=64, heads=4, mlp_dim=128,
                        inference=False):
    """Forward + backward of :class:`EncoderBlock` against ``nn.TransformerEncoderLayer`` (same weights).

    PyTorch's layer is pre-norm with GELU (``norm_first=True``), no dropout, as the notebook's ViT; the
    default sizes are the cpu-scale notebook's (MNIST, patches of 7: 4 x 4 + 1 = 17 tokens, batch 64).
    With gradients PyTorch
    takes its regular path (its fused "fast path" serves inference only); ``inference=True`` times the forward
    alone, both in eval mode under ``torch.inference_mode``, where that fast path applies. Returns {"ours_ms",
    "theirs_ms", "ratio", "name"}, ratio = ours / theirs (medians, ABBA order, ``common.bench``).
    """
    from common.bench import time_forward_backward

    for name, val in (("repeats", repeats), ("batch", batch), ("tokens", tokens), ("dim", dim)):
        check_int(name, val, low=1)
    torch.manual_seed(0)
    ours = EncoderBlock(dim, heads, mlp_dim).to(device)
    theirs = nn.TransformerEncoderLayer(dim, heads, mlp_dim, dropout=0.0, activation="gelu", layer_norm_eps=1e-6,
                                        batch_first=True, norm_first=True).to(device)
    theirs.load_state_dict(ours.state_dict())
    if inference:
        ours.eval(), theirs.eval()
    x = torch.randn(batch, tokens, dim)
    t_ours, t_theirs = time_forward_backward(ours, theirs, (x,), device=device, repeats=repeats,
                                             backward=not inference)
    return {"ours_ms": t_ours, "theirs_ms": t_theirs, "ratio": t_ours / t_theirs,
            "name": f"ViT encoder layer {'inference' if inference else 'fwd+bwd'}, batch {batch} x {tokens}, "
                    f"d {dim}, {heads} heads"}
