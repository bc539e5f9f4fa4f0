"""Turn a conversation into input_ids and labels: image tokens expanded, only answers learned."""

from __future__ import annotations

from dataclasses import dataclass

from vlft.data.records import IMAGE_PLACEHOLDER, ROLES, DataError
from vlft.data.template import ChatTemplate

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TokenSpec:
    """What the tokenizer and model agree on for images and turn ends."""

    image_token_id: int
    num_image_tokens: int
    bos_token_id: int | None
    eos_token_id: int


def encode_text(tokenizer, text: str, spec: TokenSpec) -> list[int]:
    """Tokenize text, replacing each `<image>` with the model's run of image tokens."""
    ids: list[int] = []
    for i, piece in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if i > 0:
            ids.extend([spec.image_token_id] * spec.num_image_tokens)
        if piece:
            ids.extend(tokenizer(piece, add_special_tokens=False)["input_ids"])
    return ids


def turn_texts(turns: list[dict], template: ChatTemplate) -> list[tuple[bool, str]]:
    """(learned, text) of each part of a conversation as the template writes it: the system text and user
    turns are context, the assistant answers are learned."""
    parts = [(False, template.system + " ")] if template.system else []
    for turn in turns:
        if ROLES[turn["from"]] == "user":
            parts.append((False, template.user_turn(turn["value"])))
        else:
            parts.append((True, template.answer_prefix + turn["value"]))
    return parts


def texts_to_tokenize(turns: list[dict], template: ChatTemplate) -> list[str]:
    """The texts encode_conversation hands the tokenizer (to tokenize many conversations in one call)."""
    return [piece for _, text in turn_texts(turns, template) for piece in text.split(IMAGE_PLACEHOLDER) if piece]


def encode_conversation(turns: list[dict], tokenizer, template: ChatTemplate, spec: TokenSpec,
                        max_length: int, where: str = "record") -> tuple[list[int], list[int]]:
    """(input_ids, labels) for a multi-turn conversation.

    Labels are IGNORE_INDEX except on assistant answers and their end-of-turn token.
    Sequences longer than ``max_length`` are cut from the end; the cut never falls inside
    the image tokens: if they do not fit, DataError names the record.
    """
    input_ids = [spec.bos_token_id] if spec.bos_token_id is not None else []
    labels = [IGNORE_INDEX] * len(input_ids)
    for learned, text in turn_texts(turns, template):
        ids = encode_text(tokenizer, text, spec)
        if learned:
            ids.append(spec.eos_token_id)
        input_ids += ids
        labels += ids if learned else [IGNORE_INDEX] * len(ids)
    return truncate(input_ids, labels, spec, max_length, where)


def truncate(input_ids: list[int], labels: list[int], spec: TokenSpec, max_length: int,
             where: str) -> tuple[list[int], list[int]]:
    if len(input_ids) <= max_length:
        return input_ids, labels
    image_positions = [i for i, t in enumerate(input_ids) if t == spec.image_token_id]
    if image_positions and image_positions[-1] >= max_length:
        raise DataError(f"{where}: its {len(image_positions)} image tokens end at position {image_positions[-1] + 1}, "
                        f"beyond data.max_length={max_length}; raise max_length", reason="too_long", where=where)
    return input_ids[:max_length], labels[:max_length]


def encode_prompt(turns: list[dict], tokenizer, template: ChatTemplate, spec: TokenSpec) -> list[int]:
    """input_ids of the conversation so far, ending where the assistant should start answering."""
    ids, _ = encode_conversation(turns, tokenizer, template, spec, max_length=10**9)
    return ids

