"""Evaluate a run directory (or a config) on its eval set.

    python scripts/evaluate.py runs/llava_dora_tiny [key=value ...]
"""

import sys

from vlft.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
