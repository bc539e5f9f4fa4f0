"""The contract a model family module fulfils, written down once.

A family is one module in vlft/models (llava.py, vl_bart.py, vit.py), registered by name in
`vlft.models.FAMILIES`. A run resolves it once with `get_family(cfg.model.family)` and hands the module along; the
rest of vlft calls only the hooks below and never branches on a family's name.

Every family is a `ModelFamily` and answers in one of two ways, which decides how it is evaluated and served:
`AnswersInText` (generation scored by each record's task, LLaVA and VL-BART) or `ClassifiesImages` (top-1
accuracy, ViT). The remaining protocols are optional abilities, asked for with `isinstance(family, ...)`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from vlft.config import ModelConfig, RunConfig
from vlft.models.base import ModelBundle


@runtime_checkable
class ModelFamily(Protocol):
    """The hooks every family gives. ``cfg`` is the whole run config; ``bundle`` what the family's load returned."""

    TOWERS: dict[str, tuple[str, ...]]
    """Tower name (`language`, `vision`, `projector`, or the family's own, e.g. `head`) -> module-name prefixes."""

    MODEL_FILES: tuple[str, ...]
    """File names, any one of which marks a local directory as a saved model of this family."""

    DATA_OPTIONS: frozenset[str]
    """The optional `data.*` keys the family reads (`features`, `group_by_record`); others must stay unset."""

    def load(self, model_cfg: ModelConfig, path: str, with_model: bool = True) -> ModelBundle:
        """A checkpoint (hub name or directory, including what `export_merged` wrote) with everything needed to
        feed it; ``with_model=False``: the tokenizer and processors only."""

    def build_tiny_for_run(self, cfg: RunConfig, out_dir: str | Path) -> Path:
        """Build the random-init model of ``cfg.model.tiny`` (sized to the training data), save it under
        ``out_dir`` and return the directory `load_for_run` reads."""

    def load_for_run(self, cfg: RunConfig, path: str, with_model: bool = True) -> ModelBundle:
        """`load` with whatever else the run config says (e.g. the label set of a new classification head)."""

    def train_dataset(self, cfg: RunConfig, bundle: ModelBundle, on_error: str | None = None) -> Any:
        """The training examples of ``cfg.data.train``: a torch Dataset with `records`, `path` and `skips`
        (a vlft.data.skips.SkipLog, or None). ``on_error`` overrides ``cfg.data.on_error``."""

    def eval_dataset(self, cfg: RunConfig, bundle: ModelBundle, on_error: str | None = None) -> Any:
        """The evaluation examples of ``cfg.data.eval`` (first ``cfg.eval.max_samples``), as `train_dataset`."""

    def collator(self, bundle: ModelBundle) -> Callable[[list[dict]], dict]:
        """Batches the training examples into the model's keyword arguments (labels included)."""

    def export_merged(self, model: Any, bundle: ModelBundle, out_dir: str | Path) -> None:
        """Write ``model`` (adapters already folded in) so that it loads without vlft and peft, and through `load`."""


@runtime_checkable
class AnswersInText(Protocol):
    """A family whose model generates its answers (evaluated by vlft.eval.evaluator.evaluate_vqa)."""

    def generation_options(self, model: Any, bundle: ModelBundle) -> dict:
        """How vlft.eval.generate.generate_answers feeds eval batches to ``model.generate``: a `collate_fn`
        and/or a `model_inputs` function. Evaluation and vlft.serve share them, so their answers agree."""


@runtime_checkable
class ClassifiesImages(Protocol):
    """A family whose model maps an image to one of a fixed set of labels (evaluated by top-1 accuracy)."""

    def label_names(self, bundle: ModelBundle) -> list[str]:
        """The labels, in the order of the model's output logits."""


@runtime_checkable
class BuildsOnMeta(Protocol):
    """A family whose named checkpoints can be built without their weights (for `vlft train --dry-run`)."""

    def architecture_config(self, name_or_path: str) -> Any:
        """The architecture's config, read without downloading weights."""

    def build_on_meta(self, config: Any) -> Any:
        """The model of ``config`` on the meta device."""


@runtime_checkable
class ChecksTokenBudget(Protocol):
    """A family whose examples can outgrow `data.max_length` by their visual tokens alone."""

    def check_token_budget(self, config: Any, cfg: RunConfig) -> dict:
        """Raise ConfigError when a video's tokens do not fit; return the budget for `--dry-run` to print."""
