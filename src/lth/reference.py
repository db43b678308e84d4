"""The reference pages of the documentation, as Markdown made from the code itself: the command
line from the argparse parser, the config keys from the config dataclasses (each field's meaning
is the docstring under it, its bounds the ones `validate` enforces), the presets from `PRESETS`.

The docs build (`scripts/mkdocs_hooks.py`) calls `page(name)` for every page that holds the
marker `<!-- lth-reference:NAME -->`, so the reference is made at build time and cannot drift
from the parser and the dataclasses. `python -m lth.reference cli|config|presets` prints a page.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import sys
import textwrap
import types
import typing
from typing import Any

from lth import cli
from lth import config as cfgmod

PAGES = ("cli", "config", "presets")
MARKER = "<!-- lth-reference:{} -->"


def _cell(text: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ").replace("<", "&lt;").replace(">", "&gt;")


# ---------------------------------------------------------------- command line


def _option_row(action: argparse.Action) -> str:
    name = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.metavar or action.dest}`"
    takes = "" if action.nargs == 0 else (action.metavar or action.dest.upper())
    if action.nargs == "+":
        takes += " ..."
    default = "" if action.default in (None, False, argparse.SUPPRESS) or action.nargs == 0 else f"`{action.default}`"
    required = "required" if action.required else ""
    return f"| {name} | {_cell(takes)} | {default or required} | {_cell(action.help or '')} |"


def cli_markdown() -> str:
    """One section per subcommand: its usage, then every option with its argument, default and help."""
    parser = cli.make_parser()
    lines = [f"`lth --version` prints the version; `lth COMMAND --help` prints what this page says about COMMAND.", ""]
    for name, sub in cli.subcommands(parser).items():
        usage = " ".join(sub.format_usage().removeprefix("usage: ").split())
        lines += [f"## lth {name}", "", _cell(cli.command_help(parser, name)).capitalize() + ".", "", "```text", textwrap.fill(usage, 100, subsequent_indent="    "), "```", ""]
        rows = [_option_row(a) for a in sub._actions if a.dest != "help"]
        lines += ["| option | argument | default | meaning |", "|---|---|---|---|", *rows, ""]
        if any(a.dest == "preset" for a in sub._actions):
            lines += ["Every [config key](config.md) can be set with its dotted name: `--train.epochs 3`, "
                      "`--prune.rates.conv 0.1`, `--prune.layer_rates.NAME 0.05`.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- config keys


def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string literal right below it in the class body)."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            docs[node.target.id] = " ".join(str(after.value.value).split())
    return docs


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [_type_name(a) for a in typing.get_args(hint) if a is not type(None)]
        return " or ".join(inner) + " or unset"
    if typing.get_origin(hint) is dict:
        return f"table of {_type_name(typing.get_args(hint)[1])}"
    return getattr(hint, "__name__", str(hint))


def _default(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, dict):
        return "{}" if not value else repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, str) else str(value)


def _outside_hash(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in cfgmod.HASH_NEUTRAL)


def config_rows(cls: type, prefix: str = "") -> list[tuple[str, str, str, str, str]]:
    """(key, type, default, allowed values, meaning) for every key of `cls`, nested tables flattened."""
    hints, docs, example = typing.get_type_hints(cls), field_docs(cls), cls()
    rows = []
    for f in dataclasses.fields(cls):
        key, hint = prefix + f.name, hints[f.name]
        if dataclasses.is_dataclass(hint):
            continue
        if f.name not in docs:
            raise ValueError(f"{cls.__name__}.{f.name} has no docstring: write its meaning under the field")
        allowed = cfgmod.BOUNDS[key].text() if key in cfgmod.BOUNDS else ", ".join(cfgmod.CHOICES.get(key, ()))
        meaning = docs[f.name] + (" *Outside the hash.*" if _outside_hash(key) else "")
        rows.append((key, _type_name(hint), _default(getattr(example, f.name)), allowed, meaning))
    return rows


def config_sections() -> dict[str, list[tuple[str, str, str, str, str]]]:
    """The keys by TOML table: the top level first, then one per nested dataclass."""
    sections = {"top level": config_rows(cfgmod.Config)}
    hints = typing.get_type_hints(cfgmod.Config)
    for f in dataclasses.fields(cfgmod.Config):
        if dataclasses.is_dataclass(hints[f.name]):
            sections[f.name] = config_rows(hints[f.name], f.name + ".")
    return sections


def config_markdown() -> str:
    lines = ["Every key with its type, default (the seed study's), the values `lth` accepts and its meaning. "
             "Set a key in a TOML file (`--config F.toml`, `lth config` prints one) or on the command line with its "
             "dotted name (`--train.epochs 3`). A value outside its bounds is refused in one line naming the key. "
             "Keys marked *outside the hash* say where and how a study executes or what it records, not what it computes, "
             "so they do not change the run directory's hash.", ""]
    for section, rows in config_sections().items():
        doc = inspect.getdoc(cfgmod.Config if section == "top level" else typing.get_type_hints(cfgmod.Config)[section]) or ""
        lines += [f"## {section}", "", " ".join(doc.split()), "",
                  "| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
        lines += [f"| `{key}` | {kind} | `{default}` | {_cell(allowed)} | {_cell(meaning)} |" for key, kind, default, allowed, meaning in rows]
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------- presets


def _training(c: cfgmod.Config) -> str:
    t = c.train
    length = f"{t.steps:,} iterations a round" if t.steps else f"{t.initial_epochs} epochs, then {t.epochs} a round"
    optimizer = f"Adam {t.lr:g} (ε {t.eps:g})" if t.optimizer == "adam" else (
        f"SGD {t.lr:g}, momentum {t.momentum:g}" + (", Nesterov" if t.nesterov else "") + f", weight decay {t.weight_decay:g}")
    schedule = (f", ×{t.gamma:g} at {t.milestones}" if t.milestones else "") + (f", warm-up {t.warmup}" if t.warmup != "0it" else "")
    extra = (", crop + flip" if t.augment == "crop-flip" else "") + (f", validation every {t.eval_every} it" if t.eval_every != "epoch" else "")
    return f"{optimizer}, batch {t.batch_size}, {length}{schedule}{extra}"


def _pruning(c: cfgmod.Config) -> str:
    p = c.prune
    if p.scope == "layer":
        rates = " / ".join(f"{k} {v:g}" for k, v in p.rates.items())
        return f"{p.criterion} per layer ({rates}), {p.rounds} rounds"
    output = ", output layer included" if p.include_output else ""
    return f"{p.criterion} {p.fraction:g} global{output}, {p.rounds} rounds ({100 * (1 - p.fraction) ** p.rounds:.1f}% left)"


def _data(c: cfgmod.Config) -> str:
    d = c.data
    train, test = cfgmod.DATASET_SIZES[d.dataset][:2]
    parts = [(d.train_size, train - d.validation), (d.val_size, d.validation), (d.test_size, test)]
    sizes = " / ".join("none" if full == 0 else f"{n:,}" if n else f"all {full:,}" for n, full in parts)
    extras = [x for x in (f"labels {d.labels}" if d.labels != "fine" else "", f"normalize {d.normalize}" if d.normalize != "none" else "") if x]
    return f"{d.dataset}: {sizes}" + (f" ({', '.join(extras)})" if extras else "")


def presets_markdown() -> str:
    missing = sorted(set(cfgmod.PRESETS) ^ set(cfgmod.PRESET_NOTES))
    if missing:
        raise ValueError(f"PRESETS and PRESET_NOTES disagree on {', '.join(missing)}: describe every preset in PRESET_NOTES")
    lines = ["Each preset is a complete config (`lth config --preset NAME` prints it as TOML); any key can be changed on "
             "top of it (`--prune.criterion magnitude`, `--rewind reinit`, `--replicates 3`). "
             "Data: training / validation / test images.", "",
             "| preset | what | model | data | training | pruning | rewind |", "|---|---|---|---|---|---|---|"]
    for name, c in cfgmod.PRESETS.items():
        lines.append(f"| `{name}` | {_cell(cfgmod.PRESET_NOTES[name])} | `{c.model}` | {_data(c)} | {_cell(_training(c))} | "
                     f"{_cell(_pruning(c))} | `{c.rewind}` |")
    return "\n".join(lines) + "\n"


def page(name: str) -> str:
    """The generated body of reference page `name` (one of PAGES)."""
    return {"cli": cli_markdown, "config": config_markdown, "presets": presets_markdown}[name]()


if __name__ == "__main__":
    print(page(sys.argv[1] if len(sys.argv) > 1 else "cli"))
