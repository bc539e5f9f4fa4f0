"""What every model family hands to the rest of vlft."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class ModelLoadError(RuntimeError):
    """A checkpoint could not be found or read; the message names it."""


@dataclass
class ModelBundle:
    """A loaded model with everything needed to feed it.

    towers maps `language`, `vision`, `projector` to module-name prefixes inside ``model``.
    """

    model: Any
    tokenizer: Any
    image_processor: Any
    template: Any  # how conversations become tokens (vlft.data.template); None where the family has none
    num_image_tokens: int
    image_token_id: int
    towers: dict[str, tuple[str, ...]]
    base_path: str
    extra: dict = field(default_factory=dict)
