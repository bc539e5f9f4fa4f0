"""A checkpoint's own chat template: conversations rendered as its processor renders them.

The record's turns become chat messages (`vlft.data.conversation.to_messages`) and are rendered with the
checkpoint's Jinja template, then tokenized as the processor tokenizes a rendered prompt (with the tokenizer's
special tokens unless the text already starts with BOS): input_ids are the processor's, token for token, but
for each image or video standing as one marker token until it is read.

Labels cover each assistant answer and the special tokens the template writes right after it (`<|im_end|>`):
taken from the template's `{% generation %}` markers where it has them, else from where the answer starts
(the conversation so far rendered with the generation prompt) and ends (rendered with the answer). A template
whose answers end without the tokenizer's end-of-sequence token (llava-1.5-hf's, llava-v1.6-mistral-hf's) gets
one appended after each answer, learned: the checkpoint was trained to stop there (LLaVA's `</s>`), and a model
never shown an end learns not to stop.
"""

from __future__ import annotations

import re

from transformers.utils.chat_template_utils import render_jinja_template

from vlft.data.conversation import IGNORE_INDEX, TokenSpec, to_messages, truncate
from vlft.data.records import DataError

GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


class CheckpointTemplate:
    def __init__(self, tokenizer, chat_template: str, native_video: bool, system: str = ""):
        self.tokenizer, self.chat_template, self.native_video, self.system = (tokenizer, chat_template, native_video,
                                                                               system)
        self.marked = bool(GENERATION_TAG.search(chat_template))
        # longest first: a special token that starts with another one (none in practice) is matched whole
        self.specials = sorted({t for t in tokenizer.all_special_tokens if t}, key=len, reverse=True)

    def with_system(self, system: str) -> CheckpointTemplate:
        return CheckpointTemplate(self.tokenizer, self.chat_template, self.native_video, system)

    def describe(self) -> dict:
        return {"kind": "checkpoint", "chat_template": self.chat_template, "system": self.system,
                "native_video": self.native_video}

    def texts_to_tokenize(self, turns: list[dict]) -> list[str]:
        return []  # rendered and tokenized whole, with offsets, one record at a time

    def messages(self, turns: list[dict]) -> list[dict]:
        return to_messages(turns, self.system, "video" if self.native_video else "image")

    def render(self, messages: list[dict], generation_prompt: bool = False) -> tuple[str, list[tuple[int, int]]]:
        """(text, character spans of the template's generation blocks)."""
        rendered, spans = render_jinja_template(
            conversations=[messages], chat_template=self.chat_template, return_assistant_tokens_mask=self.marked,
            add_generation_prompt=generation_prompt, **self.tokenizer.special_tokens_map)
        return rendered[0], (spans[0] if self.marked else [])

    def tokenize(self, text: str, offsets: bool = False) -> dict:
        bos = self.tokenizer.bos_token
        return self.tokenizer(text, add_special_tokens=not (bos and text.startswith(bos)),
                              return_offsets_mapping=offsets)

    def answer_spans(self, messages: list[dict], where: str) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and the character span of each answer with its end tokens."""
        text, blocks = self.render(messages)
        if self.marked:
            return text, [self._with_end_tokens(text, start, end) for start, end in blocks]
        spans = []
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before, _ = self.render(messages[:k], generation_prompt=True)
            upto, _ = self.render(messages[:k + 1])
            if not text.startswith(upto) or not upto.startswith(before):
                raise DataError(f"{where}: the checkpoint's chat template renders a conversation differently from "
                                "its beginning, so vlft cannot tell where answers are; give the template "
                                "{% generation %} markers", reason=None)
            end = len(upto.rstrip())
            spans.append((len(before), max(end, len(before))))
        return text, spans

    def _with_end_tokens(self, text: str, start: int, end: int) -> tuple[int, int]:
        end = len(text[:end].rstrip())
        while special := next((t for t in self.specials if text.startswith(t, end)), None):
            end += len(special)
        return start, end

    def encode(self, turns: list[dict], tokenizer, spec: TokenSpec, max_length: int = 10**9,
               where: str = "record") -> tuple[list[int], list[int]]:
        text, spans = self.answer_spans(self.messages(turns), where)
        encoded = self.tokenize(text, offsets=True)
        input_ids, labels, eos = [], [], spec.eos_token_id
        for token, (start, end) in zip(encoded["input_ids"], encoded["offset_mapping"], strict=True):
            learned = any(start < b and end > a for a, b in spans)
            if not learned and labels and labels[-1] != IGNORE_INDEX and input_ids[-1] != eos:
                input_ids.append(eos)  # the answer before this token ended without an end-of-sequence token
                labels.append(eos)
            input_ids.append(token)
            labels.append(token if learned else IGNORE_INDEX)
        if labels and labels[-1] != IGNORE_INDEX and input_ids[-1] != eos:
            input_ids.append(eos)
            labels.append(eos)
        return truncate(input_ids, labels, spec, max_length, where)

    def prompt(self, turns: list[dict], tokenizer, spec: TokenSpec) -> list[int]:
        """The conversation so far rendered with the template's generation prompt."""
        text, _ = self.render(self.messages(turns), generation_prompt=True)
        return self.tokenize(text)["input_ids"]
