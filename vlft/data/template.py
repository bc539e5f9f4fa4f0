"""Conversation templates: how a record's turns become input_ids and labels.

Two kinds, one interface (`encode`, `prompt`, `with_system`, `describe`, `texts_to_tokenize`):
- `LlavaV1Template`: LLaVA-1.5's own training format (Vicuna v1), vlft's fallback for checkpoints without a
  chat template and the tiny default's;
- `vlft.data.chat_template.CheckpointTemplate`: the checkpoint's own chat template, as its processor renders it.

Both write one marker token per image or video (the checkpoint's image or video token); the dataset expands
each marker to the tokens the processor says that image or clip occupies when it is read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from vlft.data.conversation import IGNORE_INDEX, TokenSpec, encode_text, truncate
from vlft.data.records import IMAGE_PLACEHOLDER, ROLES, VIDEO_PLACEHOLDER


def with_image_markers(turns: list[dict]) -> list[dict]:
    """A video's `<video>` placeholder as one `<image>` marker (for a template that has no video token)."""
    return [{**t, "value": t["value"].replace(VIDEO_PLACEHOLDER, IMAGE_PLACEHOLDER)} for t in turns]


@dataclass(frozen=True)
class LlavaV1Template:
    """LLaVA-1.5 (Vicuna v1) turns: ``<system> USER: <q> ASSISTANT: <a></s>``.

    The user part of each turn is context (labels -100); the assistant part, its end-of-turn token
    included, is what the model learns to produce.
    """

    system: str = ""
    user_prefix: str = "USER: "
    assistant_prefix: str = " ASSISTANT:"
    # SentencePiece (Llama) tokenizers add the leading space themselves.
    answer_prefix: str = ""

    def with_system(self, system: str) -> LlavaV1Template:
        return dataclasses.replace(self, system=system)

    def describe(self) -> dict:
        return {"kind": "llava_v1", **dataclasses.asdict(self)}

    def user_turn(self, text: str) -> str:
        return f"{self.user_prefix}{text}{self.assistant_prefix}"

    def turn_texts(self, turns: list[dict]) -> list[tuple[bool, str]]:
        """(learned, text) of each part: the system text and user turns are context, answers are learned."""
        parts = [(False, self.system + " ")] if self.system else []
        for turn in with_image_markers(turns):
            if ROLES[turn["from"]] == "user":
                parts.append((False, self.user_turn(turn["value"])))
            else:
                parts.append((True, self.answer_prefix + turn["value"]))
        return parts

    def texts_to_tokenize(self, turns: list[dict]) -> list[str]:
        """The texts `encode` hands the tokenizer (to tokenize many conversations in one call)."""
        return [piece for _, text in self.turn_texts(turns) for piece in text.split(IMAGE_PLACEHOLDER) if piece]

    def encode(self, turns: list[dict], tokenizer, spec: TokenSpec, max_length: int = 10**9,
               where: str = "record") -> tuple[list[int], list[int]]:
        """(input_ids, labels): labels IGNORE_INDEX except on answers and their end-of-turn token; sequences
        longer than ``max_length`` are cut from the end, never inside the image tokens."""
        input_ids = [spec.bos_token_id] if spec.bos_token_id is not None else []
        labels = [IGNORE_INDEX] * len(input_ids)
        for learned, text in self.turn_texts(turns):
            ids = encode_text(tokenizer, text, spec)
            if learned:
                ids.append(spec.eos_token_id)
            input_ids += ids
            labels += ids if learned else [IGNORE_INDEX] * len(ids)
        return truncate(input_ids, labels, spec, max_length, where)

    def prompt(self, turns: list[dict], tokenizer, spec: TokenSpec) -> list[int]:
        """input_ids of the conversation so far, ending where the assistant should start answering."""
        return self.encode(turns, tokenizer, spec)[0]


LLAVA_V1 = LlavaV1Template()
