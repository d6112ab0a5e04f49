"""The 31 planned topics (folder, module, short title, year) and access to topic modules."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from .runtime import REPO_ROOT

SECTIONS = {
    "01-deep-neural-networks": "Deep neural networks",
    "02-optimization-and-regularization": "Optimization and regularization",
    "03-sequence-modeling": "Sequence modeling",
    "04-transformers": "Transformers",
    "05-image-generation": "Image generation",
}

# (folder, module, title, year)
TOPICS: list[tuple[str, str, str, int]] = [
    ("01-deep-neural-networks/01-dnn", "dnn", "Backpropagation", 1986),
    ("01-deep-neural-networks/02-cnn", "cnn", "Convolutional networks (LeNet)", 1989),
    ("01-deep-neural-networks/03-alex-net", "alexnet", "AlexNet", 2012),
    ("01-deep-neural-networks/04-u-net", "unet", "U-Net", 2015),
    ("02-optimization-and-regularization/01-weight-decay", "weight_decay", "Weight decay", 1991),
    ("02-optimization-and-regularization/02-relu", "relu", "Rectified linear units", 2011),
    ("02-optimization-and-regularization/03-residuals", "resnet", "Residual networks", 2015),
    ("02-optimization-and-regularization/04-dropout", "dropout", "Dropout", 2014),
    ("02-optimization-and-regularization/05-batch-norm", "batchnorm", "Batch normalization", 2015),
    ("02-optimization-and-regularization/06-layer-norm", "layernorm", "Layer normalization", 2016),
    ("02-optimization-and-regularization/07-gelu", "gelu", "GELU", 2016),
    ("02-optimization-and-regularization/08-adam", "adam", "Adam", 2014),
    ("03-sequence-modeling/01-rnn", "rnn", "Recurrent networks", 1989),
    ("03-sequence-modeling/02-lstm", "lstm", "LSTM", 1997),
    ("03-sequence-modeling/03-learning-to-forget", "forget_gate", "Learning to forget", 2000),
    ("03-sequence-modeling/04-word2vec", "word2vec", "word2vec", 2013),
    ("03-sequence-modeling/05-seq2seq", "seq2seq", "Sequence to sequence", 2014),
    ("03-sequence-modeling/06-attention", "attention", "Attention (Bahdanau)", 2014),
    ("03-sequence-modeling/07-mixture-of-experts", "moe", "Mixture of experts", 2017),
    ("04-transformers/01-transformer", "transformer", "Transformer", 2017),
    ("04-transformers/02-bert", "bert", "BERT", 2018),
    ("04-transformers/03-t5", "t5", "T5", 2019),
    ("04-transformers/04-gpt", "gpt", "GPT-2 / GPT-3", 2019),
    ("04-transformers/05-lora", "lora", "LoRA", 2021),
    ("04-transformers/06-rlhf", "rlhf", "RLHF", 2019),
    ("04-transformers/07-vision-transformer", "vit", "Vision Transformer", 2020),
    ("05-image-generation/01-gan", "gan", "GAN", 2014),
    ("05-image-generation/02-vae", "vae", "VAE / VQ-VAE", 2013),
    ("05-image-generation/03-diffusion", "diffusion", "Diffusion (DDPM)", 2020),
    ("05-image-generation/04-clip", "clip", "CLIP", 2021),
    ("05-image-generation/05-dall-e", "dalle", "DALL-E", 2021),
]


def topic_dir(folder: str) -> Path:
    """The absolute path of a topic folder such as ``"01-deep-neural-networks/01-dnn"``."""
    return REPO_ROOT / folder


def existing_topics() -> list[tuple[str, str, str, int]]:
    """The planned topics whose implementation module exists in the repository."""
    return [t for t in TOPICS if (topic_dir(t[0]) / f"{t[1]}.py").exists()]


def resolve(name: str) -> tuple[str, str, str, int]:
    """Find a topic by folder (``01-deep-neural-networks/01-dnn``), leaf (``01-dnn``) or module (``dnn``).

    Raises ``ValueError`` listing every topic when nothing matches.
    """
    key = str(name).strip().rstrip("/")
    for t in TOPICS:
        if key in (t[0], t[0].split("/")[1], t[1]) or key.endswith("/" + t[0]):
            return t
    listing = "\n  ".join(f"{t[0]}  ({t[1]}.py){'' if (topic_dir(t[0]) / (t[1] + '.py')).exists() else '  [planned]'}"
                          for t in TOPICS)
    raise ValueError(f"unknown topic {name!r}; the topics are:\n  {listing}")


def topic(name: str) -> ModuleType:
    """Import a topic's module by its name (``topic("cnn")``), from its folder.

    The module is registered under its own name, so ``topic("cnn") is cnn`` inside the
    notebook that did ``import cnn``.
    """
    folder, module, _, _ = resolve(name)
    if module in sys.modules:
        return sys.modules[module]
    path = topic_dir(folder) / f"{module}.py"
    if not path.exists():
        raise ValueError(f"topic {folder} is planned but {path.name} does not exist yet")
    spec = importlib.util.spec_from_file_location(module, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[module] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[module]
        raise
    return mod


# One line per topic: which limit of its time the paper lifted. Rendered into the README's index by
# ``make scoreboard``; a test checks that every topic in TOPICS has one.
LIMITS: dict[str, str] = {
    "01-deep-neural-networks/01-dnn": "depth: hidden layers could be trained, so a net could learn its own features",
    "01-deep-neural-networks/02-cnn": "parameters: shared local filters built the structure of images into the net",
    "01-deep-neural-networks/03-alex-net": "compute: two GPUs made a large CNN trainable on ImageNet's 1.2 million images",
    "01-deep-neural-networks/04-u-net": "data: skip connections and augmentation made dense prediction work from a few labelled images",
    "02-optimization-and-regularization/01-weight-decay": "regularisation: a penalty on weight size curbed overfitting",
    "02-optimization-and-regularization/02-relu": "optimisation: a non-saturating unit let deep nets train without pre-training",
    "02-optimization-and-regularization/03-residuals": "depth: identity shortcuts made nets of 100+ layers trainable",
    "02-optimization-and-regularization/04-dropout": "regularisation: random dropping of units let large nets generalise",
    "02-optimization-and-regularization/05-batch-norm": "optimisation: normalised layer inputs allowed much higher learning rates",
    "02-optimization-and-regularization/06-layer-norm": "optimisation: normalisation without the batch, for recurrent nets and any batch size",
    "02-optimization-and-regularization/07-gelu": "architecture: a smooth, probabilistic gate, later the activation of BERT and GPT",
    "02-optimization-and-regularization/08-adam": "optimisation: per-parameter step sizes that work with little tuning",
    "03-sequence-modeling/01-rnn": "memory: a learning rule for nets whose state carries information through time",
    "03-sequence-modeling/02-lstm": "memory: a gated cell kept error signals alive over long time lags",
    "03-sequence-modeling/03-learning-to-forget": "memory: a forget gate let LSTMs reset themselves on endless streams",
    "03-sequence-modeling/04-word2vec": "embeddings: cheap word vectors learned from over a billion words of unlabelled text",
    "03-sequence-modeling/05-seq2seq": "architecture: one net mapping a sequence to a sequence of another length",
    "03-sequence-modeling/06-attention": "memory: the decoder looks back at every source word instead of one fixed vector",
    "03-sequence-modeling/07-mixture-of-experts": "parameters: sparse gating grew capacity without growing compute per example",
    "04-transformers/01-transformer": "compute: attention without recurrence trains in parallel over a whole sequence",
    "04-transformers/02-bert": "data: pre-training on unlabelled text made small labelled sets enough",
    "04-transformers/03-t5": "architecture: every text task cast as text-to-text, one model and one loss",
    "04-transformers/04-gpt": "scale: next-word prediction on web text, and a law for what more compute buys",
    "04-transformers/05-lora": "compute: adapting a large model by training a tiny low-rank update",
    "04-transformers/06-rlhf": "data: human preferences as the training signal for what a model should say",
    "04-transformers/07-vision-transformer": "architecture: with enough data, attention replaced convolution for images",
    "05-image-generation/01-gan": "randomness: a learned sampler trained against a learned critic, no likelihood needed",
    "05-image-generation/02-vae": "randomness: a latent-variable model trained end to end by reparameterised sampling",
    "05-image-generation/03-diffusion": "randomness: generation as many small, stable denoising steps",
    "05-image-generation/04-clip": "data: 400 million captioned web images as supervision, zero-shot classifiers from text",
    "05-image-generation/05-dall-e": "embeddings: images as tokens, so one Transformer writes pictures from captions",
}
