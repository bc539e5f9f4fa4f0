"""`vlft train` with one fault injected, chosen by $VLFT_FAULT (it also reaches every rank under the deepspeed
launcher):

    kill_step:N   SIGKILL this process in the middle of optimizer step N (after its backward)
    kill_save:N   SIGKILL while checkpoint-N is being written (model and optimizer out, trainer state not)
    nan_step:N    make the loss NaN at step N

    python tests/faults/harness.py <config.yaml> [key=value ...]
"""

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from vlft.cli import main  # noqa: E402
from vlft.train.trainer import VlftTrainer  # noqa: E402


def inject(fault: str) -> None:
    kind, step = fault.split(":")
    step = int(step)
    if kind == "kill_step":
        original = VlftTrainer.training_step

        def training_step(self, *args, **kwargs):
            loss = original(self, *args, **kwargs)
            if self.state.global_step + 1 == step:
                os.kill(os.getpid(), signal.SIGKILL)
            return loss

        VlftTrainer.training_step = training_step
    elif kind == "kill_save":
        original = VlftTrainer._save_rng_state

        def save_rng_state(self, output_dir):
            if self.state.global_step == step:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, output_dir)

        VlftTrainer._save_rng_state = save_rng_state
    elif kind == "nan_step":
        original = VlftTrainer.compute_loss

        def compute_loss(self, *args, **kwargs):
            loss = original(self, *args, **kwargs)
            return loss * torch.nan if self.state.global_step + 1 == step else loss

        VlftTrainer.compute_loss = compute_loss
    else:
        raise SystemExit(f"unknown fault {fault!r}")


if __name__ == "__main__":
    if os.environ.get("VLFT_FAULT"):
        inject(os.environ["VLFT_FAULT"])
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    sys.exit(main(["train", *args]))
