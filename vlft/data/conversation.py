"""What every conversation template shares: the token layout, the tokenization of text around image
placeholders, cutting to max_length, and a record's turns as chat messages."""

from __future__ import annotations

from dataclasses import dataclass

from vlft.data.records import IMAGE_PLACEHOLDER, ROLES, VIDEO_PLACEHOLDER, DataError

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TokenSpec:
    """What the tokenizer and model agree on for images and turn ends."""

    image_token_id: int
    num_image_tokens: int
    bos_token_id: int | None
    eos_token_id: int
    video_token_id: int | None = None  # a checkpoint whose videos have a token of their own

    @property
    def visual_token_ids(self) -> tuple[int, ...]:
        return (self.image_token_id,) if self.video_token_id is None else (self.image_token_id, self.video_token_id)


def encode_text(tokenizer, text: str, spec: TokenSpec) -> list[int]:
    """Tokenize text, replacing each `<image>` with the model's run of image tokens."""
    ids: list[int] = []
    for i, piece in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if i > 0:
            ids.extend([spec.image_token_id] * spec.num_image_tokens)
        if piece:
            ids.extend(tokenizer(piece, add_special_tokens=False)["input_ids"])
    return ids


def truncate(input_ids: list[int], labels: list[int], spec: TokenSpec, max_length: int,
             where: str) -> tuple[list[int], list[int]]:
    if len(input_ids) <= max_length:
        return input_ids, labels
    visual = spec.visual_token_ids
    image_positions = [i for i, t in enumerate(input_ids) if t in visual]
    if image_positions and image_positions[-1] >= max_length:
        raise DataError(f"{where}: its {len(image_positions)} image tokens end at position {image_positions[-1] + 1}, "
                        f"beyond data.max_length={max_length}; raise max_length", reason="too_long", where=where)
    return input_ids[:max_length], labels[:max_length]


def to_messages(turns: list[dict], system: str = "", video_kind: str = "video") -> list[dict]:
    """A record's turns as chat messages (the format of `apply_chat_template`): each `<image>` placeholder an
    image entry and `<video>` a ``video_kind`` entry, before the turn's text (the placeholders and the line break
    after them removed); the system prompt first."""
    messages = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
    for turn in turns:
        text, content = turn["value"], []
        for placeholder, kind in ((IMAGE_PLACEHOLDER, "image"), (VIDEO_PLACEHOLDER, video_kind)):
            content += [{"type": kind}] * text.count(placeholder)
            text = text.replace(placeholder + "\n", "").replace(placeholder, "")
        messages.append({"role": ROLES[turn["from"]], "content": [*content, {"type": "text", "text": text}]})
    return messages
