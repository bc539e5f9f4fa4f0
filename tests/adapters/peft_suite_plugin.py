"""pytest plugin: peft's own tests, run with every DoRA layer they build resolving to vlft's variant.

Loaded by tests/adapters/test_peft_dora_suite.py as ``-p peft_suite_plugin`` in a pytest run over peft's test
files. The whole session runs inside ``vlft_dora_variants()``; how many layers got each vlft variant goes to
the JSON file named by VLFT_PEFT_SUITE_REPORT, so that the caller can tell the swap really happened.
"""

from __future__ import annotations

import json
import os
from collections import Counter

from vlft.adapters import dora

_made: Counter = Counter()
_scope = dora.vlft_dora_variants()


def _counting(variant_cls):
    def make():
        _made[variant_cls.__name__] += 1
        return variant_cls()

    return make


def pytest_configure(config):
    for stock, fast in list(dora.FAST_VARIANTS.items()):
        dora.FAST_VARIANTS[stock] = _counting(fast)
    _scope.__enter__()


def pytest_unconfigure(config):
    _scope.__exit__(None, None, None)
    report = os.environ.get("VLFT_PEFT_SUITE_REPORT")
    if report:
        with open(report, "w") as f:
            json.dump(dict(_made), f)
