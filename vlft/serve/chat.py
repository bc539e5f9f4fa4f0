"""`vlft chat <run_or_merged_dir>`: a conversation in the terminal about one image or video.

Each question is asked with the conversation so far (the family's eval encoding of a multi-turn record: LLaVA's
template holds every turn; VL-BART, trained on single questions, reads the latest one), and the answer is printed
token by token as it is generated. `/image PATH` or `/video PATH` switches to another one (a new conversation),
`/reset` forgets the conversation, Ctrl-D quits. An image classifier (ViT) prints its top labels instead.
"""

from __future__ import annotations

import sys

from vlft.data.records import DataError
from vlft.serve.loading import directory_kind, load_served, served_config
from vlft.serve.predict import format_labels
from vlft.serve.predictor import Predictor, check_visual

HELP = "/image PATH or /video PATH: talk about another one; /reset: forget the conversation; Ctrl-D: quit"


class Conversation:
    """The image or video being talked about and the (question, answer) turns so far."""

    def __init__(self, predictor: Predictor, task: str, max_new_tokens: int | None, temperature: float,
                 top_k: int = 5, out=None):
        self.predictor, self.task, self.top_k = predictor, task, top_k
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.out = out or sys.stdout
        self.image: str | None = None
        self.video: str | None = None
        self.turns: list[tuple[str, str]] = []

    def say(self, text: str = "", end: str = "\n") -> None:
        self.out.write(text + end)
        self.out.flush()

    def show(self, image: str | None = None, video: str | None = None) -> None:
        """Talk about this image or video from now on (checked first: a bad path changes nothing)."""
        if video and self.predictor.labels is not None:
            raise DataError("an image classifier takes images, not videos", reason=None)
        check_visual(self.predictor.served.cfg.data.video, image=image, video=video)
        self.image, self.video, self.turns = image, video, []
        self.say(f"[{'image' if image else 'video'}: {image or video}; new conversation]")
        if self.predictor.labels is not None:
            self.ask("")

    def command(self, line: str) -> None:
        name, _, argument = line.partition(" ")
        argument = argument.strip()
        if name in ("/image", "/video") and argument:
            self.show(**{name[1:]: argument})
        elif name == "/reset":
            self.turns = []
            self.say("[conversation reset]")
        else:
            self.say(f"[{HELP}]")

    def ask(self, question: str) -> None:
        """Print the answer as it comes (a classifier's labels at once), and keep the turn."""
        predictor = self.predictor
        if predictor.labels is not None:
            if not self.image:
                raise DataError("no image yet: /image PATH", reason=None)
            (prediction,) = predictor.predict([predictor.record(image=self.image)], top_k=self.top_k)
            self.say(f"model> {format_labels(prediction['labels'])}")
            return
        record = predictor.record(question, self.image, self.video, self.task, self.turns)
        stream = predictor.stream(record, self.max_new_tokens, self.temperature)
        self.say("model> ", end="")
        shown = ""
        for piece in stream:
            piece = piece if shown else piece.lstrip()
            shown += piece
            self.say(piece, end="")
        self.say()
        self.turns.append((question, stream.answer))


def run_chat(args) -> int:
    if args.image and args.video:
        raise DataError("give --image or --video, not both: a conversation is about one of them", reason=None)
    cfg = served_config(args.dir, directory_kind(args.dir))
    check_visual(cfg.data.video, image=args.image, video=args.video)  # a bad path: one line, before loading
    predictor = Predictor(load_served(args.dir, args.device))
    conversation = Conversation(predictor, args.task, args.max_new_tokens, args.temperature, args.top_k)
    try:
        conversation.say(f"vlft chat: {predictor.served.describe()}")
        conversation.say(f"[{HELP}]")
        if args.image or args.video:
            conversation.show(args.image, args.video)
        return _loop(conversation)
    finally:
        predictor.close()


def _loop(conversation: Conversation) -> int:
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    while True:
        try:
            line = input("you> ").strip()
            if not line:
                continue
            if line.startswith("/"):
                conversation.command(line)
            else:
                conversation.ask(line)
        except EOFError:  # Ctrl-D
            conversation.say()
            return 0
        except KeyboardInterrupt:  # Ctrl-C, at the prompt or while an answer is printed
            conversation.say()
            return 130
        except DataError as err:  # a bad path or question ends the turn, not the conversation
            conversation.say(f"error: {err}")
