"""CLIP from scratch: contrastive language-image pre-training (Radford et al., 2021), at MNIST scale.

*Learning Transferable Visual Models From Natural Language Supervision* trains an image encoder and a text encoder
together so that, in a batch of N (image, caption) pairs, each image's embedding is most similar to its own
caption's embedding among the N captions and vice versa: the symmetric cross-entropy over the N x N matrix of
scaled cosine similarities (Sec. 2.3 and the pseudocode of Fig. 3). Each encoder ends in a linear projection to the
shared embedding space and an L2 normalisation; the similarities are multiplied by a learned temperature
exp(t), initialised to 1 / 0.07 and clipped so that it never scales the logits by more than 100 (Sec. 2.5).
Zero-shot classification embeds one caption per class ("a photo of the digit seven") and picks the class whose
caption is most similar to the image (Sec. 3.1.2); prompt ensembling averages the caption embeddings of several
templates per class, in embedding space (Sec. 3.1.4).

Here the images are 28x28 digits, each drawn in one of a few styles (:func:`stylise`: as in MNIST, small, thick or
inverted), and the captions come from templates filled with the style and the class name ("a photo of a small
seven"), so that, as on the web, a caption describes more about its image than the class. A small ConvNet
stands in for the paper's ResNet / ViT, and the text encoder is the paper's kind of model at toy size, a causal
Transformer (the GPT blocks of topic 04-gpt) read out at the end-of-text token, over a word-level vocabulary
(:data:`VOCAB`) instead of the paper's byte-pair encoding. :func:`pretrained` gives later topics (DALL-E's
re-ranking) a trained, frozen model, cached in ``checkpoints/`` and retrained by the same seeded code when absent.
"""

import math
import os
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

import common
from common import data
from common.checks import check_choice, check_float, check_images, check_int, check_labels, check_tensor
from common.progress import progress
from common.runtime import REPO_ROOT, scale

gpt = common.topic("gpt")

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
STYLES = ("", "small", "thick", "inverted")  # what a caption says about how its digit is drawn ("" = as in MNIST)
TEMPLATES = (  # used to caption the training images; {style} is one of STYLES
    "a photo of a {style} {name}",
    "a {style} handwritten {digit}",
    "the {style} number {name}",
    "a drawing of a {style} {digit}",
    "a picture of the {style} {digit}",
    "the {style} digit {name}",
)
HELD_OUT_TEMPLATES = (  # never seen in training: new arrangements of the same words, for evaluation only
    "a {style} picture of the digit {name}",
    "a handwritten {style} number {digit}",
)
PAD, SOT, EOT = 0, 1, 2  # padding, start-of-text and end-of-text tokens
CONTEXT = 12  # tokens per caption, <sot> and <eot> included
DATASETS = ("mnist",)
SEED = 0  # the seed of the pretrained model's training
_CACHE: dict[tuple[str, bool], "CLIP"] = {}


def caption(label: int, template: str, style: str = "") -> str:
    """The caption of class ``label`` (0-9) from ``template``: ``{name}`` becomes "seven", ``{digit}`` becomes "7",
    ``{style}`` becomes ``style`` (one of :data:`STYLES`; "" drops it); "a inverted" is written "an inverted"."""
    check_int("label", label, low=0, high=9)
    if not isinstance(template, str) or ("{name}" not in template and "{digit}" not in template):
        raise ValueError(f"template must be a str holding {{name}} or {{digit}}, got {template!r}")
    return prompts([template], [style])[0].format(name=NAMES[label], digit=str(label))


def prompts(templates=HELD_OUT_TEMPLATES, styles=STYLES) -> list[str]:
    """Every template of ``templates`` with ``{style}`` filled by every style of ``styles``: the single prompts
    (still holding ``{name}`` / ``{digit}``) that :func:`class_embeddings` ensembles, template-major order."""
    if isinstance(templates, str) or not templates or isinstance(styles, str) or not styles:
        raise ValueError(f"templates and styles must be non-empty lists, got {templates!r:.60} and {styles!r:.60}")
    for st in styles:
        check_choice("style", st, STYLES)
    return [re.sub(r"\ba inverted\b", "an inverted", " ".join(t.replace("{style}", st).split()))
            for t in templates for st in styles]


# The vocabulary: every word of every (template, style) prompt, the class names and the numerals.
_WORDS = sorted({w for t in prompts(TEMPLATES + HELD_OUT_TEMPLATES) for w in t.split() if "{" not in w}
                | set(NAMES) | {str(d) for d in range(10)})
VOCAB = ("<pad>", "<sot>", "<eot>", *_WORDS)  # token id -> word
_IDS = {w: i for i, w in enumerate(VOCAB)}


def stylise(images, styles):
    """Images (N, 1, 28, 28) in [0, 1] drawn in the given styles (N,) (indices into :data:`STYLES`): "" unchanged,
    "small" shrunk to 16x16 and centred, "thick" strokes widened by a 3x3 max filter, "inverted" as 1 - x."""
    check_images("stylise", images, channels=1)
    check_tensor("styles", styles, dim=1, integer=True)
    if len(styles) != len(images) or (len(styles) and not (0 <= int(styles.min()) and int(styles.max()) < len(STYLES))):
        raise ValueError(f"styles must hold one index in [0, {len(STYLES)}) per image, got {tuple(styles.shape)} "
                         f"for {len(images)} images")
    if tuple(images.shape[-2:]) != (28, 28):
        raise ValueError(f"stylise expects 28x28 images, got {tuple(images.shape[-2:])}")
    if len(images) and not (0.0 <= float(images.min()) and float(images.max()) <= 1.0):
        raise ValueError("stylise expects pixel values in [0, 1] (inverting maps x to 1 - x)")
    styles = styles.to(images.device)
    out = images.clone()
    small = F.interpolate(images, size=16, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    for k, drawn in ((1, F.pad(small, (6, 6, 6, 6))), (2, F.max_pool2d(images, 3, 1, 1)), (3, 1 - images)):
        mask = styles == k
        out[mask] = drawn[mask]
    return out


def tokenize(captions, context: int = CONTEXT) -> torch.Tensor:
    """Word-level tokens of a list of captions: LongTensor (N, context) = <sot> words <eot> <pad>...

    Text is lower-cased and split into words of letters and digits (punctuation dropped). An empty caption, one
    longer than ``context - 2`` words, or a word outside :data:`VOCAB` raises ``ValueError``.
    """
    check_int("context", context, low=3)
    if isinstance(captions, str) or not isinstance(captions, (list, tuple)) or not captions:
        raise ValueError(f"tokenize expects a non-empty list of caption strings, got {captions!r:.80}")
    out = torch.full((len(captions), context), PAD, dtype=torch.long)
    for i, text in enumerate(captions):
        if not isinstance(text, str):
            raise ValueError(f"caption {i} must be a str, got {type(text).__name__}")
        words = re.findall(r"[a-z0-9]+", text.lower())
        if not words:
            raise ValueError(f"caption {i} is empty ({text!r}); expected at least one word")
        if len(words) > context - 2:
            raise ValueError(f"caption {i} has {len(words)} words, longer than the text context allows "
                             f"({context - 2} words + <sot> + <eot>): {text!r}")
        unknown = [w for w in words if w not in _IDS]
        if unknown:
            raise ValueError(f"caption {i} has words outside clip.VOCAB: {unknown}")
        out[i, :len(words) + 2] = torch.tensor([SOT, *(_IDS[w] for w in words), EOT])
    return out


def contrastive_loss(image_emb, text_emb, logit_scale):
    """The symmetric cross-entropy of Fig. 3: logits = scale * I T^T (N, N); the i-th image's target is the i-th text
    and vice versa; the loss is the mean of the image->text and text->image cross-entropies. Embeddings (N, D)."""
    check_tensor("image_emb", image_emb, dim=2, floating=True)
    check_tensor("text_emb", text_emb, dim=2, floating=True)
    if image_emb.shape != text_emb.shape:
        raise ValueError(f"image_emb and text_emb must have the same shape (N, D), got {tuple(image_emb.shape)} "
                         f"and {tuple(text_emb.shape)}")
    logits = logit_scale * image_emb @ text_emb.T  # (N, N): row i = image i against every text
    target = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


class CLIP(nn.Module):
    """Image encoder, text encoder, both projected to a shared ``embed_dim`` space, and the learned temperature.

    Image encoder: two 3x3 conv blocks (``channels`` and twice that, ReLU, 2x2 max-pool) and a ``width``-unit ReLU
    layer (:meth:`image_features`, what the linear probe reads), then the linear projection W_i. Text encoder: token
    and position embeddings, ``text_layers`` causal GPT blocks, a final layer norm, the activation at the <eot>
    token (Sec. 2.4), then the linear projection W_t. Padding after <eot> needs no mask: causal attention never
    lets <eot> see it. ``init_temperature`` (> 0) sets t = log(1 / temperature); the scale exp(t) is clipped at
    ``max_scale`` (Sec. 2.5: 0.07 and 100).
    """

    def __init__(self, embed_dim=64, channels=16, width=128, text_width=64, text_layers=2, text_heads=4,
                 context=CONTEXT, init_temperature=0.07, max_scale=100.0):
        super().__init__()
        for name, v in (("embed_dim", embed_dim), ("channels", channels), ("width", width),
                        ("text_width", text_width), ("text_layers", text_layers), ("text_heads", text_heads)):
            check_int(name, v, low=1)
        self.context = check_int("context", context, low=3)
        check_float("init_temperature", init_temperature, 0.0, low_open=True)
        self.max_scale = check_float("max_scale", max_scale, 0.0, low_open=True)
        self.config = dict(embed_dim=embed_dim, channels=channels, width=width, text_width=text_width,
                           text_layers=text_layers, text_heads=text_heads, context=context,
                           init_temperature=float(init_temperature), max_scale=float(max_scale))
        c = channels
        self.conv = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),          # (N, c, 14, 14)
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),      # (N, 2c, 7, 7)
            nn.Flatten(), nn.Linear(2 * c * 49, width), nn.ReLU())              # (N, width)
        self.image_proj = nn.Linear(width, embed_dim, bias=False)              # W_i
        cfg = gpt.GPTConfig(vocab_size=len(VOCAB), block_size=context, n_layer=text_layers, n_head=text_heads,
                            n_embd=text_width)
        self.tok_emb = nn.Embedding(len(VOCAB), text_width)
        self.pos_emb = nn.Parameter(0.01 * torch.randn(context, text_width))
        self.blocks = nn.ModuleList(gpt.Block(cfg) for _ in range(text_layers))
        self.ln_final = nn.LayerNorm(text_width)
        self.text_proj = nn.Linear(text_width, embed_dim, bias=False)          # W_t
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))  # t

    def scale(self) -> torch.Tensor:
        """The logit scale exp(t), clipped at ``max_scale`` (no gradient flows to t while clipped)."""
        return self.logit_scale.exp().clamp(max=self.max_scale)

    def image_features(self, x):
        """The image encoder's representation (N, width) of float images x (N, 1, 28, 28) in [0, 1]."""
        check_images("CLIP.encode_image", x, channels=1)
        if tuple(x.shape[-2:]) != (28, 28):
            raise ValueError(f"CLIP expects 28x28 images, got {tuple(x.shape[-2:])}")
        lo, hi = float(x.min()), float(x.max())
        if not (0.0 <= lo and hi <= 1.0):
            raise ValueError(f"CLIP expects pixel values in [0, 1], got values from {lo} to {hi}")
        return self.conv(x)

    def encode_image(self, x):
        """L2-normalised image embeddings (N, embed_dim) of float images x (N, 1, 28, 28) in [0, 1]."""
        return F.normalize(self.image_proj(self.image_features(x)), dim=-1)

    def encode_text(self, tokens):
        """L2-normalised text embeddings (N, embed_dim) of tokens (N, context) from :func:`tokenize`."""
        check_tensor("tokens", tokens, dim=2, integer=True)
        if tokens.shape[1] != self.context:
            raise ValueError(f"tokens must be (N, {self.context}) (the text context), got {tuple(tokens.shape)}")
        if int(tokens.min()) < 0 or int(tokens.max()) >= len(VOCAB):
            raise ValueError(f"token ids must lie in [0, {len(VOCAB)}), got {int(tokens.min())}..{int(tokens.max())}")
        is_eot = tokens == EOT
        if not bool(is_eot.any(1).all()):
            raise ValueError("every row of tokens needs an <eot> token; build them with clip.tokenize")
        h = self.tok_emb(tokens) + self.pos_emb  # (N, T, W)
        for block in self.blocks:
            h = block(h)
        h = self.ln_final(h)
        h = h[torch.arange(len(h), device=h.device), is_eot.int().argmax(1)]  # (N, W): the first <eot>
        return F.normalize(self.text_proj(h), dim=-1)

    def forward(self, images, tokens):
        """The (N, M) similarity logits scale * cos(image_i, text_j) of N images and M token rows."""
        return self.scale() * self.encode_image(images) @ self.encode_text(tokens).T

    def loss(self, images, tokens):
        """The symmetric contrastive loss (:func:`contrastive_loss`) of N images and their N captions' tokens."""
        i, t = self.encode_image(images), self.encode_text(tokens)
        if len(i) != len(t):
            raise ValueError(f"loss needs one caption per image, got {len(i)} images and {len(t)} token rows")
        return contrastive_loss(i, t, self.scale())


def _device(model):
    return next(model.parameters()).device


def caption_tokens(templates=TEMPLATES, context: int = CONTEXT) -> torch.Tensor:
    """Tokens of every (class, template) caption: LongTensor (10, len(templates), context)."""
    if isinstance(templates, str) or not templates:
        raise ValueError(f"templates must be a non-empty list of template strings, got {templates!r:.80}")
    caps = [caption(c, t) for c in range(10) for t in templates]
    return tokenize(caps, context).view(10, len(templates), context)


def train(model, images, labels, templates=TEMPLATES, styles=STYLES, epochs=1, batch_size=256, lr=1e-3,
          weight_decay=0.1, seed=0, show=True):
    """Train ``model`` on uint8 images (N, 1, 28, 28) drawn and captioned afresh each step: a random style of
    ``styles`` (:func:`stylise`) and a random template of ``templates`` filled with that style and the image's class.
    AdamW with a cosine learning-rate decay (Sec. 2.5), no weight decay on the temperature. Returns
    ``{"loss": [...], "scale": [...]}`` per step; the model ends in eval mode."""
    if not isinstance(model, CLIP):
        raise ValueError(f"train expects a CLIP model, got {type(model).__name__}")
    check_tensor("images", images, dim=4)
    if images.dtype != torch.uint8:
        raise ValueError(f"train expects uint8 images (N, 1, 28, 28), got {images.dtype}")
    check_labels("labels", labels, 10, n=len(images))
    for name, v in (("epochs", epochs), ("batch_size", batch_size), ("seed", seed)):
        check_int(name, v, low=0 if name == "seed" else 1)
    check_float("lr", lr, 0.0, low_open=True)
    check_float("weight_decay", weight_decay, 0.0)
    dev = _device(model)
    table = caption_tokens(prompts(templates, styles), model.context).to(dev)  # (10, K * S, T), template-major
    style_ids = torch.tensor([STYLES.index(st) for st in styles], device=dev)  # (S,) indices into STYLES
    loader = data.TensorLoader(images, labels, batch_size=batch_size, device=dev, seed=seed, drop_last=True)
    g = torch.Generator().manual_seed(seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    rest = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr)
    total = epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / total)))
    hist = {"loss": [], "scale": []}
    model.train()
    bar = progress(total=total, desc="CLIP", disable=not show)
    for _ in range(epochs):
        for xb, yb in loader:
            k = torch.randint(len(templates), (len(yb),), generator=g).to(dev)
            st = torch.randint(len(styles), (len(yb),), generator=g).to(dev)
            loss = model.loss(stylise(data.to_float(xb), style_ids[st]), table[yb, k * len(styles) + st])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            hist["loss"].append(loss.item())
            hist["scale"].append(model.scale().item())
            if not math.isfinite(hist["loss"][-1]):
                raise FloatingPointError(f"non-finite loss at step {len(hist['loss'])} (learning rate {lr})")
            bar.update()
        bar.set_postfix(loss=f"{sum(hist['loss'][-len(loader):]) / len(loader):.3f}", scale=f"{hist['scale'][-1]:.1f}")
    bar.close()
    model.eval()
    return hist


@torch.no_grad()
def class_embeddings(model, templates=TEMPLATES):
    """Zero-shot classifier weights (10, D): per class, the mean of its captions' embeddings over ``templates``,
    re-normalised (prompt ensembling in embedding space, Sec. 3.1.4; one template gives a single prompt)."""
    tokens = caption_tokens(templates, model.context).to(_device(model))  # (10, K, T)
    emb = model.encode_text(tokens.flatten(0, 1)).view(10, len(templates), -1)  # (10, K, D)
    return F.normalize(emb.mean(1), dim=-1)


@torch.no_grad()
def embed_images(model, images, batch_size=1000):
    """Image embeddings (N, D) and encoder features (N, width) of uint8 or float images, in batches (no grad)."""
    check_tensor("images", images, dim=4)
    dev, emb, feats = _device(model), [], []
    for xb in images.split(batch_size):
        xb = data.to_float(xb) if xb.dtype == torch.uint8 else xb
        f = model.image_features(xb.to(dev))
        feats.append(f)
        emb.append(F.normalize(model.image_proj(f), dim=-1))
    return torch.cat(emb), torch.cat(feats)


@torch.no_grad()
def zero_shot_accuracy(model, images, labels, templates=TEMPLATES):
    """Share of images whose most similar class (by :func:`class_embeddings` over ``templates``) is their label."""
    check_labels("labels", labels, 10, n=len(images))
    emb, _ = embed_images(model, images)
    pred = (emb @ class_embeddings(model, templates).T).argmax(1)  # (N,)
    return float((pred.cpu() == labels.cpu()).float().mean())


@torch.no_grad()
def score(model, images, captions):
    """Cosine similarity (N,) of each float image (N, 1, 28, 28) in [0, 1] with its caption (N strings)."""
    if not isinstance(model, CLIP):
        raise ValueError(f"score expects a CLIP model, got {type(model).__name__}")
    check_images("score", images, channels=1)
    tokens = tokenize(captions, model.context)
    if len(tokens) != len(images):
        raise ValueError(f"score needs one caption per image, got {len(images)} images and {len(tokens)} captions")
    dev = _device(model)
    return (model.encode_image(images.to(dev)) * model.encode_text(tokens.to(dev))).sum(-1)


def linear_probe(train_x, train_y, test_x, weight_decay=1e-3, steps=100):
    """Logistic regression on frozen features (the paper's linear probe, App. A.3, with L-BFGS): fit on
    (train_x (N, F), train_y (N,)) with an L2 penalty ``weight_decay`` and return the predicted labels of test_x."""
    check_tensor("train_x", train_x, dim=2, floating=True)
    check_tensor("test_x", test_x, dim=2, floating=True)
    check_labels("train_y", train_y, 10, n=len(train_x))
    check_float("weight_decay", weight_decay, 0.0)
    check_int("steps", steps, low=1)
    if test_x.shape[1] != train_x.shape[1]:
        raise ValueError(f"test_x must have {train_x.shape[1]} features like train_x, got {test_x.shape[1]}")
    mu, sd = train_x.mean(0), train_x.std(0)  # standardise with the training statistics
    sd = torch.where(sd > 1e-6, sd, torch.ones_like(sd))  # constant features (blank border pixels) stay put
    xs, train_y = (train_x - mu) / sd, train_y.to(train_x.device)
    head = nn.Linear(xs.shape[1], 10).to(xs)
    nn.init.zeros_(head.weight)  # a convex problem: start from the zero classifier
    nn.init.zeros_(head.bias)
    opt = torch.optim.LBFGS(head.parameters(), lr=1, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(head(xs), train_y) + weight_decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return head((test_x - mu) / sd).argmax(1)


def checkpoint_path(dataset="mnist", smoke=None):
    """Where the pretrained CLIP is cached: ``checkpoints/clip-<dataset>[-smoke].pt`` in the repo."""
    check_choice("dataset", dataset, DATASETS)
    smoke = scale() == "smoke" if smoke is None else smoke
    return REPO_ROOT / "checkpoints" / f"clip-{dataset}{'-smoke' if smoke else ''}.pt"


def train_pretrained(dataset="mnist", smoke=None, epochs=None):
    """Train the default :class:`CLIP` on ``dataset``'s train split with :data:`TEMPLATES` and seed :data:`SEED`
    (3 epochs on the real data, 15 on the smoke stand-in), save it to :func:`checkpoint_path` and return it.
    The caller's random state is left untouched."""
    check_choice("dataset", dataset, DATASETS)
    smoke = scale() == "smoke" if smoke is None else smoke
    epochs = check_int("epochs", epochs if epochs is not None else (15 if smoke else 3), low=1)
    x, y = data.load_images(dataset, "train", synthetic=smoke)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = CLIP()
        train(model, x, y, epochs=epochs, seed=SEED, show=True)
    path = checkpoint_path(dataset, smoke)
    tmp = path.with_name(f"{path.name}.{os.getpid()}")  # per process: two notebooks may train at once
    common.train.save_checkpoint(tmp, model, dataset=dataset, epochs=epochs, seed=SEED, config=model.config)
    os.replace(tmp, path)
    return model


def pretrained(dataset="mnist"):
    """A trained, frozen CLIP in eval mode (CPU) for ``dataset``, loaded from :func:`checkpoint_path` or trained
    there first by :func:`train_pretrained` when absent; one object per process and scale."""
    check_choice("dataset", dataset, DATASETS)
    smoke = scale() == "smoke"
    if (dataset, smoke) not in _CACHE:
        path = checkpoint_path(dataset, smoke)
        if path.exists():
            model = CLIP()
            common.train.load_checkpoint(path, model)
        else:
            print(f"clip: no {path.relative_to(REPO_ROOT)}; training the {dataset} CLIP once")
            model = train_pretrained(dataset, smoke)
        _CACHE[(dataset, smoke)] = model.cpu().eval().requires_grad_(False)
    return _CACHE[(dataset, smoke)]
