"""DALL-E: text-to-image generation as language modelling over text tokens then image tokens (Ramesh et al., 2021).

*Zero-Shot Text-to-Image Generation* trains in two stages (Sec. 2). Stage one learns a discrete auto-encoder that
turns an image into a grid of tokens (there a dVAE, 256x256 RGB -> 32x32 tokens of K = 8192); here it is the VQ-VAE
of topic 5.2 (``common.topic("vae")``): 28x28 digits -> 7x7 tokens of K = 64. Stage two concatenates the caption's
tokens with the image's tokens into one stream and fits a decoder-only transformer to it autoregressively, so that
p(text, image) = prod_i p(s_i | s_<i) (Sec. 2.2); here the transformer is topic 4.4's GPT (``common.topic("gpt")``).
The caption and image cross-entropies are averaged over tokens of each kind and weighted 1/8 and 7/8 (Sec. 2.2).

To draw an image for a caption, the caption is the prompt and the 49 image tokens are sampled one by one (top-k and
temperature here), through GPT's key/value cache; the VQ-VAE decoder turns them into pixels. Sec. 2.5 then draws N
samples per caption and keeps the ones a pretrained contrastive model (CLIP, topic 5.4) scores as closest to the
caption: :func:`rerank` and :func:`best_of_n`.

Not reproduced: the dVAE with its Gumbel-softmax relaxation (a VQ-VAE stands in), BPE text, the sparse row / column /
convolutional attention masks for image tokens (dense causal attention here), and the 12-billion-parameter scale.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import common
import common.bench
from common.checks import check_float, check_int, check_tensor

gpt = common.topic("gpt")

TEXT_WEIGHT = 1 / 8  # Sec. 2.2: caption loss x 1/8, image loss x 7/8


def sample_next(logits, temperature=1.0, top_k=None, generator=None):
    """One token per row from logits (B, V): divide by ``temperature`` (> 0), keep the ``top_k`` largest (all when
    None), sample from the softmax. Returns (B,) int64."""
    check_tensor("logits", logits, dim=2, floating=True)
    temperature = check_float("temperature", temperature, 0.0, low_open=True)
    logits = logits.float() / temperature
    if top_k is not None:
        check_int("top_k", top_k, low=1, high=logits.shape[1])
        kth = torch.topk(logits, top_k, dim=1).values[:, -1:]  # (B, 1): the k-th largest logit
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(F.softmax(logits, dim=1), 1, generator=generator).squeeze(1)  # (B,)


class DALLE(nn.Module):
    """A GPT over ``text_len`` caption tokens followed by ``image_len`` image tokens (Sec. 2.2, scaled down).

    One vocabulary: caption tokens keep their ids in [0, text_vocab), image token k becomes text_vocab + k. Each
    position's logits are read over its own kind's vocabulary only: positions predicting a caption token over the
    caption ids, positions predicting an image token over the image ids, so a sample is always a valid image grid.
    """

    def __init__(self, text_vocab, text_len, image_vocab=64, image_len=49, n_layer=4, n_head=4, n_embd=128,
                 dropout=0.0):
        super().__init__()
        self.text_vocab = check_int("text_vocab", text_vocab, low=1)
        self.text_len = check_int("text_len", text_len, low=1)
        self.image_vocab = check_int("image_vocab", image_vocab, low=2)
        self.image_len = check_int("image_len", image_len, low=1)
        self.cfg = gpt.GPTConfig(vocab_size=text_vocab + image_vocab, block_size=text_len + image_len - 1,
                                 n_layer=n_layer, n_head=n_head, n_embd=n_embd, dropout=dropout)
        self.transformer = gpt.GPT(self.cfg)  # the last image token is never fed: block T + N - 1 suffices

    def check_text(self, text):
        """Caption tokens must be int (B, text_len) in [0, text_vocab); returns them."""
        check_tensor("text", text, dim=2, integer=True)
        if text.shape[1] == 0:
            raise ValueError("text is an empty caption (0 tokens); expected (B, text_len) token ids")
        if text.shape[1] != self.text_len:
            raise ValueError(f"text must have text_len={self.text_len} tokens (the text context), got "
                             f"{text.shape[1]} (shape {tuple(text.shape)})")
        if int(text.min()) < 0 or int(text.max()) >= self.text_vocab:
            raise ValueError(f"text ids must lie in [0, {self.text_vocab}), got {int(text.min())}..{int(text.max())}")
        return text

    def check_image(self, image, batch):
        """Image tokens must be int (B, image_len) or (B, h, w) with h * w = image_len, in [0, image_vocab);
        returns them flattened to (B, image_len) in raster order."""
        check_tensor("image tokens", image, dim=(2, 3), integer=True)
        image = image.flatten(1)
        if image.shape != (batch, self.image_len):
            raise ValueError(f"image tokens must be ({batch}, {self.image_len}) (or a grid of that many), got "
                             f"{tuple(image.shape)}")
        if int(image.min()) < 0 or int(image.max()) >= self.image_vocab:
            raise ValueError(f"image tokens must lie in [0, {self.image_vocab}), got "
                             f"{int(image.min())}..{int(image.max())}")
        return image

    def forward(self, text, image):
        """Logits for every next token: (text_logits (B, T-1, text_vocab) for caption tokens 2..T,
        image_logits (B, N, image_vocab) for image tokens 1..N). text (B, T), image (B, N) or (B, h, w)."""
        text = self.check_text(text)
        image = self.check_image(image, text.shape[0])
        stream = torch.cat([text, image + self.text_vocab], dim=1)  # (B, T + N): one token stream
        logits, _ = self.transformer(stream[:, :-1])  # (B, T + N - 1, V); position p predicts stream[p + 1]
        t = self.text_len
        return logits[:, :t - 1, :self.text_vocab], logits[:, t - 1:, self.text_vocab:]

    def loss(self, text, image, text_weight=TEXT_WEIGHT):
        """Sec. 2.2's objective: text_weight * mean caption cross-entropy + (1 - text_weight) * mean image
        cross-entropy, each averaged over the tokens of its kind (nats per token). A scalar."""
        text_weight = check_float("text_weight", text_weight, 0.0, 1.0)
        text_logits, image_logits = self(text, image)
        dt = torch.promote_types(image_logits.dtype, torch.float32)  # at least float32, float64 stays float64
        image_logits, text_logits = image_logits.to(dt), text_logits.to(dt)
        image_loss = F.cross_entropy(image_logits.flatten(0, 1), image.flatten())
        if self.text_len == 1:  # a one-token caption has nothing to predict
            return image_loss
        text_loss = F.cross_entropy(text_logits.flatten(0, 1), text[:, 1:].flatten())
        return text_weight * text_loss + (1 - text_weight) * image_loss

    @torch.no_grad()
    def generate(self, text, temperature=1.0, top_k=None, use_cache=True, generator=None):
        """Sample the image tokens (B, image_len) for captions text (B, text_len): each step reads the logits of the
        next image token over the image vocabulary and calls :func:`sample_next`. With ``use_cache`` the caption is
        run once and each new token reuses the keys and values cached by GPT (4.4); without, every step re-runs the
        whole stream. Both give the same samples for the same generator."""
        text = self.check_text(text)
        temperature = check_float("temperature", temperature, 0.0, low_open=True)
        if top_k is not None:
            check_int("top_k", top_k, low=1, high=self.image_vocab)
        net, stream = self.transformer, text
        cache = gpt.KVCache(self.cfg, text.shape[0], text.device, net.wte.weight.dtype) if use_cache else None
        fed = text  # what the next forward call feeds
        for _ in range(self.image_len):
            logits, _ = net(fed, cache=cache) if use_cache else net(stream)
            nxt = sample_next(logits[:, -1, self.text_vocab:], temperature, top_k, generator)  # (B,)
            stream = torch.cat([stream, (nxt + self.text_vocab)[:, None]], dim=1)
            fed = stream[:, -1:]
        return stream[:, self.text_len:] - self.text_vocab  # (B, N) image tokens


def train(model, text, image, steps, batch_size=64, lr=1e-3, seed=0, show=True):
    """Fit ``model`` to pairs (text (M, T), image tokens (M, N) or (M, h, w)) for ``steps`` Adam steps on
    :meth:`DALLE.loss`, learning rate warmed up over the first 5% of steps then cosine-decayed to 0.
    Returns the per-step losses; the model is left in eval mode."""
    if not isinstance(model, DALLE):
        raise ValueError(f"train expects a DALLE model, got {type(model).__name__}")
    text = model.check_text(text)
    image = model.check_image(image, text.shape[0])
    check_int("steps", steps, low=1)
    check_int("batch_size", batch_size, low=1)
    check_float("lr", lr, 0.0, low_open=True)
    dev = next(model.parameters()).device
    loader = common.data.TensorLoader(text, image, batch_size=min(batch_size, len(text)), device=dev, seed=seed,
                                      drop_last=True)  # fewer pairs than batch_size: one batch of all of them
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: min(1.0, (k + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(k, steps) / steps)))
    model.train()
    losses, bar = [], common.progress(total=steps, desc="DALL-E transformer", disable=not show)
    while len(losses) < steps:
        for tb, ib in loader:
            loss = model.loss(tb, ib)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            common.train.check_finite(loss.detach(), len(losses), opt)
            losses.append(loss.item())
            bar.update()
            if len(losses) % 50 == 0:
                bar.set_postfix(loss=f"{sum(losses[-50:]) / 50:.3f}")
            if len(losses) == steps:
                break
    bar.close()
    model.eval()
    return losses


def rerank(scores, keep=1):
    """Sec. 2.5's re-ranking: for each of P captions, the indices (P, keep) of the ``keep`` best of its N candidates
    by score (scores (P, N), higher is better), best first."""
    check_tensor("scores", scores, dim=2, floating=True)
    if scores.shape[1] < 1:
        raise ValueError(f"rerank needs N >= 1 candidates per caption, got scores of shape {tuple(scores.shape)}")
    check_int("keep", keep, low=1, high=scores.shape[1])
    return scores.topk(keep, dim=1).indices


@torch.no_grad()
def best_of_n(model, text, n, decode, score, temperature=1.0, top_k=None, batch_size=1024, generator=None):
    """Draw ``n`` image samples per caption (text (P, T)), decode them to images with ``decode`` (tokens (M, N) ->
    images (M, C, H, W)), score each with ``score(images, rows)`` (rows (M,) are the captions' row indices; -> (M,),
    e.g. CLIP's cosine similarity) and keep the best (Sec. 2.5). Returns dict(first (P, C, H, W): each caption's
    first sample, i.e. no re-ranking; best (P, C, H, W): the highest-scoring sample; scores (P, n);
    tokens (P, n, N))."""
    if not isinstance(model, DALLE):
        raise ValueError(f"best_of_n expects a DALLE model, got {type(model).__name__}")
    text = model.check_text(text)
    check_int("n (samples per caption for re-ranking)", n, low=1)
    check_int("batch_size", batch_size, low=1)
    p = text.shape[0]
    rows = torch.arange(p, device=text.device).repeat_interleave(n)  # (P * n,): caption of each candidate
    tokens, images, scores = [], [], []
    for i in range(0, p * n, batch_size):
        r = rows[i:i + batch_size]
        tok = model.generate(text[r], temperature, top_k, generator=generator)  # (m, N)
        img = decode(tok)
        s = score(img, r)
        if not isinstance(s, torch.Tensor) or s.shape != (len(r),):
            raise ValueError(f"score must return a tensor of shape ({len(r)},), got {s!r:.60}")
        tokens.append(tok)
        images.append(img.cpu())
        scores.append(s.float().cpu())
    images = torch.cat(images).view(p, n, *images[0].shape[1:])  # (P, n, C, H, W)
    scores = torch.cat(scores).view(p, n)
    best = rerank(scores)[:, 0]  # (P,)
    return dict(first=images[:, 0], best=images[torch.arange(p), best], scores=scores,
                tokens=torch.cat(tokens).view(p, n, -1))


def bench_generate(device="cpu", batch=64, text_len=8, repeats=3, **model_kwargs):
    """DALL-E image-token generation (49 tokens after an 8-token caption) with GPT's KV cache against re-running
    the whole stream at every step, same model and sampler; median of ABBA-alternated runs."""
    torch.manual_seed(0)
    model = DALLE(text_vocab=32, text_len=text_len, **model_kwargs).to(device).eval()
    text = torch.randint(0, 32, (batch, text_len), device=device)

    ours, theirs = common.bench.time_ab(lambda: model.generate(text, top_k=16, use_cache=True),
                                        lambda: model.generate(text, top_k=16, use_cache=False), repeats)
    tok = batch * model.image_len
    return {"name": f"[{device}] DALL-E {model.image_len} image tokens x {batch}, KV cache vs none",
            "ours_ms": ours, "theirs_ms": theirs, "ratio": ours / theirs,
            "ours_tokens_per_s": tok / ours * 1e3, "theirs_tokens_per_s": tok / theirs * 1e3}
