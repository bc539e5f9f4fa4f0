"""Where checkpoints live: complete ones are `checkpoint-N`; one being written is under STAGING."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

STAGING = ".checkpoint-in-progress"


def complete_checkpoint_steps(output_dir: str | Path) -> list[int]:
    """Steps of the checkpoint-N directories with their trainer_state.json (the Trainer writes it last), in
    order. Checkpoints are renamed into place only once whole, so the check is belt and braces for directories
    from elsewhere."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    return sorted(int(m.group(1)) for p in out.glob("checkpoint-*")
                  if (m := re.fullmatch(r"checkpoint-(\d+)", p.name)) and (p / "trainer_state.json").is_file())


def latest_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The newest complete checkpoint-N of output_dir."""
    steps = complete_checkpoint_steps(output_dir)
    return str(Path(output_dir) / f"checkpoint-{steps[-1]}") if steps else None


def discard_partial_checkpoint(output_dir: str | Path) -> str | None:
    """Remove what a run killed while saving left in the staging directory; returns its path if any."""
    staging = Path(output_dir) / STAGING
    if not staging.exists():
        return None
    shutil.rmtree(staging)
    return str(staging)


# Pickled files of a checkpoint may name only these globals. DeepSpeed loads its optimizer shards with
# weights_only=False, so they are checked here first; the Trainer's own loads use weights_only=True.
ALLOWED_GLOBALS = frozenset({
    "numpy.ndarray", "numpy.dtype", "numpy._core.multiarray._reconstruct", "numpy.core.multiarray._reconstruct",
    "numpy.dtypes.UInt32DType", "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.utils.tensor_fragment.fragment_address", "deepspeed.runtime.zero.config.ZeroStageEnum",
})
NOT_LOADED = {"training_args.bin"}  # written for the record; resuming never reads it


class UnsafeCheckpoint(ValueError):
    """A checkpoint file would run code when unpickled; the message names the file and the global."""


def check_checkpoint_is_safe(checkpoint: str | Path) -> None:
    """Refuse a checkpoint whose pickled files reference anything but tensors and the allowed globals."""
    import torch

    for path in sorted(Path(checkpoint).rglob("*")):
        if path.suffix not in (".pt", ".pth", ".bin") or path.name in NOT_LOADED:
            continue
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception as err:  # not a torch zip file at all
            raise UnsafeCheckpoint(f"{path}: cannot be read as a torch checkpoint: {err}") from None
        unknown = sorted(set(names) - ALLOWED_GLOBALS)
        if unknown:
            raise UnsafeCheckpoint(f"{path}: refusing to load: it names {', '.join(unknown)}, which could run "
                                   f"code when unpickled; checkpoints written by vlft name none of these")
