"""A word-level tokenizer built locally from training text, for tiny offline models."""

from __future__ import annotations

import re
from collections.abc import Iterable

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}
IMAGE_TOKEN = "<image>"
_WORD = re.compile(r"\w+|[^\w\s]")


def build_word_tokenizer(texts: Iterable[str], extra_words: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """Every word and punctuation mark seen in ``texts`` becomes one token.

    Answers like "triangle" or "yes" are then a single token, which keeps a tiny model's
    output layer small; unseen words map to ``<unk>``.
    """
    words: set[str] = set(extra_words)
    for text in texts:
        words.update(_WORD.findall(text.replace(IMAGE_TOKEN, " ")))
    specials = list(SPECIAL_TOKENS.values()) + [IMAGE_TOKEN]
    vocab = {token: i for i, token in enumerate(specials + sorted(words))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, extra_special_tokens={"image_token": IMAGE_TOKEN},
                                        **SPECIAL_TOKENS)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    return tokenizer
