"""A word-level tokenizer built locally from training text, for tiny offline models."""

from __future__ import annotations

import re
from collections.abc import Iterable

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}
IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"
_WORD = re.compile(r"\w+|[^\w\s]")


def build_word_tokenizer(texts: Iterable[str], extra_words: Iterable[str] = (),
                         specials: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """Every word and punctuation mark seen in ``texts`` becomes one token; ``specials`` (a chat template's
    markers, a video token) are special tokens, never split.

    Answers like "triangle" or "yes" are then a single token, which keeps a tiny model's
    output layer small; unseen words map to ``<unk>``.
    """
    extra_specials = list(specials)
    words: set[str] = set(extra_words)
    for text in texts:
        for special in (IMAGE_TOKEN, *extra_specials):
            text = text.replace(special, " ")
        words.update(_WORD.findall(text))
    specials = list(SPECIAL_TOKENS.values()) + [IMAGE_TOKEN] + extra_specials
    vocab = {token: i for i, token in enumerate(specials + sorted(words))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, extra_special_tokens={"image_token": IMAGE_TOKEN},
                                        **SPECIAL_TOKENS)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN, *extra_specials]})
    return tokenizer
