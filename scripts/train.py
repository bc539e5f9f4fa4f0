"""Train as a config says.

    python scripts/train.py configs/llava_dora_tiny.yaml [key=value ...] [--dry-run]
    deepspeed --num_gpus 2 scripts/train.py configs/llava_dora_tiny.yaml
"""

import sys

from vlft.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
