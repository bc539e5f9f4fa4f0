"""Prompt templates: how a conversation becomes text around the image tokens."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChatTemplate:
    """LLaVA-1.5 (Vicuna v1) style turns: ``USER: <q> ASSISTANT: <a></s>``.

    The user part of each turn is context (labels -100); the assistant part, its end-of-turn
    token included, is what the model learns to produce.
    """

    system: str = ""
    user_prefix: str = "USER: "
    assistant_prefix: str = " ASSISTANT:"
    # SentencePiece (Llama) tokenizers add the leading space themselves.
    answer_prefix: str = ""

    def user_turn(self, text: str) -> str:
        return f"{self.user_prefix}{text}{self.assistant_prefix}"

    def prompt(self, question: str) -> str:
        """The text a model is given at generation time for a single-turn question."""
        head = f"{self.system} " if self.system else ""
        return head + self.user_turn(question)


LLAVA_V1 = ChatTemplate()
