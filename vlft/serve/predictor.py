"""Answers to one's own questions through exactly the evaluation's path.

A question becomes a record of the run's eval format (the image or video placeholder in the first user turn, an
empty final answer) and goes through the family's own eval dataset (prompt template, image processor, video
sampling, as `data.*` of the run's config says) and collator. Text answers come from
vlft.eval.generate.generate_answers with the family's generation_options, greedy as in evaluation unless a
temperature is asked for; an image classifier gives its labels by probability. So a prediction equals the run's
predictions.json entry for the same question.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from vlft.config import VideoConfig
from vlft.data.base import load_image
from vlft.data.records import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER, DataError
from vlft.serve.loading import ServedModel


def check_visual(video_config: VideoConfig, image: str | None = None, video: str | None = None) -> None:
    """Read the image (or the video's frames, sampled as the run samples them) once, so that a bad path or a file
    that is not an image fails with one line naming it, before any work is done."""
    from vlft.data.video import read_frames

    try:
        if image:
            load_image("", image, "given")
        if video:
            with _native_stderr_silenced():  # decord logs its own line before the error that names the file
                read_frames(video, video_config, "given")
    except DataError as err:  # the messages name the file already
        raise DataError(str(err).removeprefix("given: "), reason=err.reason) from None


@contextlib.contextmanager
def _native_stderr_silenced():
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def question_record(question: str, image: str | None = None, video: str | None = None, task: str = "vqa",
                    history: list[tuple[str, str]] = (), labels: list[str] | None = None) -> dict:
    """A record of the run's eval format. Text models: the conversation so far and the new question, the image or
    video placeholder in front of the first question (as the training data puts it) unless it has one, and an
    empty final answer (where evaluation records hold the reference). Classifiers: the image; its label field is
    required by the record format and never read here."""
    path = {"image": str(Path(image).resolve())} if image else {"video": str(Path(video).resolve())} if video else {}
    if labels is not None:
        return {"id": "question", **path, "label": labels[0]}
    placeholder = IMAGE_PLACEHOLDER if image else VIDEO_PLACEHOLDER if video else ""
    turns = []
    for i, (asked, answered) in enumerate([*history, (question, "")]):
        if i == 0 and placeholder and placeholder not in asked:
            asked = f"{placeholder}\n{asked}"
        turns += [{"from": "human", "value": asked}, {"from": "gpt", "value": answered}]
    return {"id": "question", **path, "task": task, "conversations": turns}


class _WithGenerateSettings:
    """The model as generate_answers sees it, with some of generate's arguments replaced (a streamer, sampling):
    everything else about the call stays the evaluation's."""

    def __init__(self, model, settings: dict):
        self._model, self._settings = model, settings

    def __getattr__(self, name):
        return getattr(self._model, name)

    def generate(self, **kwargs):
        return self._model.generate(**{**kwargs, **self._settings})


class AnswerStream:
    """Text pieces as they are generated (iterate), then ``answer``: the evaluation's decoded answer."""

    def __init__(self, produce, streamer):
        self.answer: str | None = None
        self._streamer, self._error = streamer, None
        self._thread = threading.Thread(target=self._run, args=(produce,), daemon=True)
        self._thread.start()

    def _run(self, produce) -> None:
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # generate_answers' progress bar, for a whole set
                self.answer = produce()
        except BaseException as err:  # handed to the reader, who would otherwise wait for tokens forever
            self._error = err
            self._streamer.end()

    def __iter__(self) -> Iterator[str]:
        yield from self._streamer
        self._thread.join()
        if self._error is not None:
            raise self._error


class Predictor:
    """Questions in, the run's kind of answers out. Records go through a scratch data cache, not the user's."""

    def __init__(self, served: ServedModel):
        self.served = served
        self._scratch = tempfile.TemporaryDirectory(prefix="vlft-serve-")
        self._written = 0

    @property
    def labels(self) -> list[str] | None:
        return self.served.labels

    def record(self, question: str = "", image: str | None = None, video: str | None = None, task: str = "vqa",
               history: list[tuple[str, str]] = ()) -> dict:
        return question_record(question, image, video, task, history, self.labels)

    def predict(self, records: list[dict], max_new_tokens: int | None = None, top_k: int = 5) -> list[dict]:
        """One prediction per record (image paths absolute or relative to the working directory)."""
        path = self._write(records)
        with _named_as_given(path):
            return self.predict_file(path, ".", max_new_tokens, top_k)

    def predict_file(self, path: str | Path, image_folder: str | Path, max_new_tokens: int | None = None,
                     top_k: int = 5) -> list[dict]:
        """{"answer"} (text models) or {"labels": [{"label", "probability"}]} (classifiers) for every record of a
        JSON/JSONL file, in order, each with the id predictions.json gives it."""
        dataset = self._dataset(path, image_folder)
        records = list(dataset.records)
        if self.labels is not None:
            return [{"id": r.get("id", i), "labels": labels}
                    for i, (r, labels) in enumerate(zip(records, self._classify(dataset, top_k), strict=True))]
        answers = self._generate(dataset, max_new_tokens, self.served.cfg.eval.batch_size)
        return [{"question_id": r.get("question_id", r.get("id", i)), "answer": answer}
                for i, (r, answer) in enumerate(zip(records, answers, strict=True))]

    def stream(self, record: dict, max_new_tokens: int | None = None, temperature: float = 0.0) -> AnswerStream:
        """A text model's answer to one record, streamed; greedy (the evaluation's) at temperature 0."""
        from transformers import TextIteratorStreamer

        path = self._write([record])
        with _named_as_given(path):
            dataset = self._dataset(path, ".")
        streamer = TextIteratorStreamer(self.served.bundle.tokenizer, skip_prompt=True, skip_special_tokens=True)
        settings = {"streamer": streamer}
        if temperature > 0:
            settings.update(do_sample=True, temperature=temperature)
        return AnswerStream(lambda: self._generate(dataset, max_new_tokens, 1, settings)[0], streamer)

    def close(self) -> None:
        self._scratch.cleanup()

    # -- the evaluation's parts ---------------------------------------------------------------------------

    def _write(self, records: list[dict]) -> Path:
        self._written += 1  # a new file each time: the data cache knows a file by path, size and mtime
        path = Path(self._scratch.name) / f"questions-{self._written}.jsonl"
        path.write_text("".join(json.dumps(record) + "\n" for record in records))
        return path

    def _dataset(self, path: str | Path, image_folder: str | Path):
        """The family's eval dataset over ``path``: the run's data settings but for the records and where their
        images are, read from images (not pre-extracted features: the question's image has none), every bad record
        an error."""
        cfg = self.served.cfg
        data = dataclasses.replace(cfg.data, eval=str(path), image_folder=str(image_folder), features=None,
                                   cache_dir=str(Path(self._scratch.name) / "cache"), on_error="raise")
        cfg = dataclasses.replace(cfg, data=data, eval=dataclasses.replace(cfg.eval, max_samples=None))
        with contextlib.redirect_stdout(io.StringIO()):  # "data: prepared ..." is a training log line
            return self.served.family.eval_dataset(cfg, self.served.bundle, on_error="raise")

    def _generate(self, dataset, max_new_tokens: int | None, batch_size: int, settings: dict | None = None
                  ) -> list[str]:
        from vlft.eval.generate import generate_answers

        bundle = self.served.bundle
        options = self.served.family.generation_options(bundle.model, bundle)
        model = _WithGenerateSettings(bundle.model, settings) if settings else bundle.model
        return generate_answers(model, dataset, batch_size, max_new_tokens or self.served.cfg.eval.max_new_tokens,
                                device=self.served.device, **options)

    def _classify(self, dataset, top_k: int) -> list[list[dict]]:
        """Labels by probability (softmax of the logits the evaluation's argmax reads), the ``top_k`` first."""
        import torch
        from torch.utils.data import DataLoader

        bundle, device = self.served.bundle, self.served.device
        dtype = next(bundle.model.parameters()).dtype
        out = []
        loader = DataLoader(dataset, batch_size=self.served.cfg.eval.batch_size,
                            collate_fn=self.served.family.collator(bundle))
        with torch.no_grad():
            for batch in loader:
                logits = bundle.model(pixel_values=batch["pixel_values"].to(device, dtype))["logits"]
                probabilities, indices = logits.float().softmax(-1).topk(min(top_k, logits.shape[-1]))
                out += [[{"label": self.labels[i], "probability": round(p, 4)} for p, i in zip(ps, ix, strict=True)]
                        for ps, ix in zip(probabilities.tolist(), indices.tolist(), strict=True)]
        return out


@contextlib.contextmanager
def _named_as_given(path: Path):
    """Errors about a record written here name what the user gave (the image, the question), not the scratch
    file and line it went through."""
    try:
        yield
    except DataError as err:
        message = re.sub(rf"{re.escape(str(path))} line \d+( \(id [^)]*\))?: ", "", str(err))
        raise DataError(message, reason=err.reason, where=err.where) from None
