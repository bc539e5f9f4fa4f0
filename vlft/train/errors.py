"""Errors a training run stops with (kept free of heavy imports: the CLI imports them first)."""


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or inf; the run stopped before that step changed any weight."""


class NodesDisagree(RuntimeError):
    """The nodes of a run found different things on their disks (newest checkpoint, output_dir); the message
    names what each node found."""
