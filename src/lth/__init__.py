"""lth: Lottery Ticket Hypothesis and high-movement pruning studies on CIFAR-10.

`lth.run_study(lth.preset("quick"))` and `lth.resume_study(run_dir)` return a `StudyResult`.
Names resolve lazily, so `import lth.report` does not pull in torch and the training code."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_MODULES = {"lth.config": "Config ConfigError preset", "lth.rundir": "RunDirError",
            "lth.study": "StudyResult run_study resume_study", "lth.compare": "run_replicates"}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names.split()}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lth' has no attribute {name!r}")
