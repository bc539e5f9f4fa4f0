"""Ask a trained model about one's own images and videos: `vlft predict`, `vlft chat`, `vlft demo`.

From a run directory (the adapter on its base model, unmerged) or a `vlft merge` output, through the evaluation's
own path (vlft.serve.predictor), so that an answer equals the run's predictions.json entry for the same question.
"""

from vlft.serve.loading import ServedModel, directory_kind, load_served
from vlft.serve.predictor import AnswerStream, Predictor, check_visual, question_record

__all__ = ["AnswerStream", "Predictor", "ServedModel", "check_visual", "directory_kind", "load_served",
           "question_record"]
