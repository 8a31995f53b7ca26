"""Flux-FMNIST's prompts and its two tiny text encoders (CLIP for the pooled vector, T5 for the tokens).

The encoders are random and frozen: a fixed seed makes them once, then their weights ship inside the
model file, so a prompt's embeddings never depend on how a future transformers release initialises a
model. Their tokenizers are word-level (`tokenizers`' WordLevel inside a transformers fast
tokenizer), built offline from a vocabulary that is every word of the training prompts.
"""
from __future__ import annotations

import torch

# Fashion-MNIST's classes in label order, as a prompt names them.
CLASS_NAMES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
               "ankle boot")
# Training prompts: each class under every template; the first is the canonical one ("a photo of a sneaker").
TEMPLATES = ("a photo of {}", "a picture of {}", "{}", "a grayscale photo of {}")
UNCOND = ""  # the prompt that label dropout trains, and true CFG's negative_prompt
SPECIALS = ("<pad>", "<unk>", "<s>", "</s>")  # ids 0-3; CLIP's eos is 3, clear of its legacy "eos == 2" path


def with_article(name: str) -> str:
    return ("an " if name[0] in "aeiou" else "a ") + name


def prompt_for(label: int, template: int = 0, templates=TEMPLATES) -> str:
    return templates[template].format(with_article(CLASS_NAMES[label]))


DEFAULT_PROMPTS = tuple(prompt_for(i) for i in range(len(CLASS_NAMES)))  # a `--prompts` default: one per class


def training_prompts(templates=TEMPLATES) -> list[str]:
    """Row label * len(templates) + template of the embedding table, then the unconditional prompt last."""
    return [prompt_for(y, k, templates) for y in range(len(CLASS_NAMES)) for k in range(len(templates))] + [UNCOND]


def _pre_tokenizer():
    from tokenizers import normalizers, pre_tokenizers
    # Lower-case, then split on spaces and punctuation: "T-shirt/top" -> t, -, shirt, /, top.
    return normalizers.Lowercase(), pre_tokenizers.Whitespace()


def build_vocab(prompts) -> list[str]:
    """The specials, then every word of `prompts` in first-seen order (stable across runs)."""
    norm, pre = _pre_tokenizer()
    words = list(SPECIALS)
    for p in prompts:
        for w, _ in pre.pre_tokenize_str(norm.normalize_str(p)):
            if w not in words:
                words.append(w)
    return words


def build_tokenizer(vocab: list[str], max_length: int, bos: bool):
    """A fast tokenizer over `vocab`; it appends </s> (and prepends <s> for CLIP, whose pooled output
    is read at the first </s>). Padding goes to the right with <pad>."""
    import transformers
    from tokenizers import Tokenizer, models, processors
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.normalizer, tok.pre_tokenizer = _pre_tokenizer()
    ids = {w: vocab.index(w) for w in ("<s>", "</s>")}
    single = "<s> $A </s>" if bos else "$A </s>"
    tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=list(ids.items()))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                                bos_token="<s>", eos_token="</s>", model_max_length=max_length)


def build_text_encoders(cfg, seed: int = 0):
    """(CLIPTextModel, T5EncoderModel), random from `seed`, frozen, without touching the global RNG.
    `cfg` is a FluxFMNISTConfig: its vocabulary, widths and text lengths."""
    import transformers
    ids = {w: cfg.vocab.index(w) for w in SPECIALS}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip = transformers.CLIPTextModel(transformers.CLIPTextConfig(
            vocab_size=len(cfg.vocab), hidden_size=cfg.clip_dim, intermediate_size=2 * cfg.clip_dim,
            num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
            max_position_embeddings=cfg.clip_len, bos_token_id=ids["<s>"], eos_token_id=ids["</s>"],
            pad_token_id=ids["<pad>"]))
        t5 = transformers.T5EncoderModel(transformers.T5Config(
            vocab_size=len(cfg.vocab), d_model=cfg.t5_dim, d_kv=cfg.t5_dim // cfg.text_heads, d_ff=2 * cfg.t5_dim,
            num_layers=cfg.text_layers, num_heads=cfg.text_heads, pad_token_id=ids["<pad>"],
            eos_token_id=ids["</s>"], decoder_start_token_id=ids["<pad>"]))
    return clip.eval().requires_grad_(False), t5.eval().requires_grad_(False)
