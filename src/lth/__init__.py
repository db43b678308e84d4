"""lth: Lottery Ticket Hypothesis and high-movement pruning studies on CIFAR-10.

Notebook entry points: `lth.run_study(config)` and `lth.resume_study(run_dir)` return a
`StudyResult` with the run directory and the per-round results; `lth.preset("quick")` gives a
ready config.
"""

__version__ = "0.1.0"

from lth.config import Config, ConfigError, preset  # noqa: E402
from lth.experiment import RunDirError, StudyResult, resume_study, run_study  # noqa: E402

__all__ = ["Config", "ConfigError", "RunDirError", "StudyResult", "preset", "resume_study", "run_study", "__version__"]
