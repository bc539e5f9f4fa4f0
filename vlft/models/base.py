"""What every model family hands to the rest of vlft."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class ModelLoadError(RuntimeError):
    """A checkpoint could not be found or read; the message names it."""


@dataclass
class ModelBundle:
    """A loaded model with everything needed to feed it.

    towers maps `language`, `vision`, `projector` (or the family's own, e.g. `head`) to module-name prefixes
    inside ``model``. ``extra`` holds what only the family's own modules read (LLaVA's processor, ViT's labels).
    """

    model: Any
    tokenizer: Any
    image_processor: Any
    towers: dict[str, tuple[str, ...]]
    base_path: str
    extra: dict = field(default_factory=dict)


@dataclass(kw_only=True)
class ConversationBundle(ModelBundle):
    """The bundle of a family whose prompts are conversations with a run of image tokens per image (LLaVA)."""

    template: Any  # how conversations become tokens (vlft.data.template / vlft.data.chat_template)
    num_image_tokens: int  # tokens one image takes in the prompt
    image_token_id: int
