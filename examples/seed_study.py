# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # High-movement lottery tickets on CIFAR-10 with `lth`
#
# The seed study prunes, after each training round, the 10% of active weights that moved most
# between the best epoch (lowest validation loss) and the final epoch, `|w_best − w_final|`, then
# rewinds the survivors to θ0 and retrains. This notebook runs such a study with `lth`, shows its
# rounds table and draws the report's figures.
#
# Parameters come from environment variables so the same notebook runs at full size by hand and
# at smoke size in the test suite:
#
# | variable | meaning | default |
# |---|---|---|
# | `LTH_NB_PRESET` | the preset to start from (`quick`, `seed`, `seed-magnitude`, ...) | `quick` |
# | `LTH_NB_OVERRIDES` | JSON object of dotted config overrides, e.g. `{"train.epochs": "3"}` | `{}` |
# | `LTH_NB_OUT` | run directory (continued if it holds this study) | `runs/notebook-<preset>` |
# | `LTH_DATA_DIR` | where CIFAR-10 is (downloaded there if missing) | the user cache |
# | `LTH_INSTALL` | what to `pip install` when `lth` is not importable (e.g. on Colab: a git URL or a path) | — |

# %%
import importlib.util
import os
import subprocess
import sys

if importlib.util.find_spec("lth") is None:  # e.g. a fresh Colab runtime
    spec = os.environ.get("LTH_INSTALL")
    if not spec:
        raise SystemExit("lth is not installed: set LTH_INSTALL to a pip spec (the project's git URL or path) and rerun")
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", spec])

# %%
import json
from pathlib import Path

import pandas as pd
from IPython.display import Image, Markdown, display

import lth
from lth.config import apply_overrides

preset_name = os.environ.get("LTH_NB_PRESET", "quick")
overrides = json.loads(os.environ.get("LTH_NB_OVERRIDES", "{}"))
config = apply_overrides(lth.preset(preset_name), overrides)
out = Path(os.environ.get("LTH_NB_OUT", f"runs/notebook-{preset_name}"))
print(f"{preset_name}: {config.prune.rounds} pruning rounds of {config.prune.criterion}, rewind {config.rewind}, into {out}")

# %% [markdown]
# ## Run the study
# Progress is saved after every epoch: if the kernel dies, running this cell again continues
# where it stopped.

# %%
resume = (out / "config.toml").exists()
result = lth.run_study(config, out=out, data_dir=os.environ.get("LTH_DATA_DIR"), resume=resume, progress=False)
rounds = pd.DataFrame(result.rounds)
rounds[["round", "remaining_pct", "pruned", "pruning_skipped", "best_epoch", "best_val_loss", "test_acc_best", "test_acc_final"]]

# %% [markdown]
# ## Report
# `lth report` reads only the run directory; the same figures come from the command line
# (`lth report RUN_DIR`).

# %%
from lth.report import write_report

report_dir = write_report([result.run_dir])
display(Markdown(f"Report written to `{report_dir}`"))
for png in sorted(report_dir.glob("*.png")):
    display(Markdown(f"**{png.stem.replace('_', ' ')}**"))
    display(Image(filename=str(png)))
