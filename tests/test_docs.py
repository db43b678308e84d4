"""The documentation cannot lie: the reference is generated from the code, the site builds with
`--strict` (broken links and anchors fail), the commands the tutorials show run on tiny real
CIFAR-10, and every exact output the docs show (the one-line errors) is what `lth` prints.

Conventions the docs follow, so that this module can check them:
- In `docs/tutorials/*.md`, every line starting with `lth ` inside a ```bash block is run, in
  order, in one fresh directory per page, with tiny sizes appended to `lth run` and
  `lth compare` (the last value of an option wins).
- Anywhere in `docs/` and in README.md, a ```text block with lines `$ lth ...` shows a command
  and, below it, its exact output (stdout and stderr together).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from lth import cli, reference
from lth import config as cfgmod

DOCS = REPO / "docs"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)
# Appended to every `lth run` / `lth compare` a tutorial shows: seconds instead of hours.
TINY = ["--rounds", "1", "--data.train_size", "40", "--data.val_size", "40", "--data.test_size", "40",
        "--train.steps", "4", "--train.eval_every", "2", "--train.batch_size", "20", "--no-energy", "--no-progress"]


def fenced_blocks(text: str, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(text) if lang == language]


def tutorial_commands(text: str) -> list[str]:
    """The `lth` command lines of a page's bash blocks, continuation lines joined, comments cut."""
    commands = []
    for block in fenced_blocks(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "lth":
                commands.append(shlex.join(words))
    return commands


def documented_outputs(text: str) -> list[tuple[str, str]]:
    """(command, expected output) for every `$ lth ...` line of the page's text blocks."""
    pairs = []
    for block in fenced_blocks(text, "text"):
        for chunk in re.split(r"^\$ ", block, flags=re.M)[1:]:
            command, _, output = chunk.partition("\n")
            if command.startswith("lth "):
                pairs.append((command.strip(), output.strip()))
    return pairs


def actual_output(command: str) -> str:
    """What `lth` prints for `command` (in-process, in the current directory), stdout + stderr."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        try:
            cli.main(shlex.split(command)[1:])
        except SystemExit:  # argparse's own errors
            pass
    return buffer.getvalue().strip()


def mismatched_outputs(pages: dict[str, str]) -> list[str]:
    """One line per documented output that `lth` no longer prints as shown."""
    wrong = []
    for name, text in pages.items():
        for command, expected in documented_outputs(text):
            got = actual_output(command)
            if got != expected:
                wrong.append(f"{name}: `{command}` is documented as {expected!r} but prints {got!r}")
    return wrong


def doc_pages() -> dict[str, str]:
    pages = {str(p.relative_to(REPO)): p.read_text() for p in sorted(DOCS.rglob("*.md"))}
    pages["README.md"] = (REPO / "README.md").read_text()
    return pages


# ---------------------------------------------------------------- the generated reference


def test_the_reference_names_every_subcommand_option_and_config_key():
    parser = cli.make_parser()
    cli_page, config_page, presets_page = (reference.page(name) for name in reference.PAGES)
    for name, sub in cli.subcommands(parser).items():
        section = cli_page.split(f"## lth {name}\n", 1)[1].split("\n## ", 1)[0]
        for action in sub._actions:
            if action.dest != "help":
                assert f"`{(action.option_strings or [action.metavar or action.dest])[0]}`" in section, (name, action.dest)
    keys = [k for k in cli.dotted_keys() if not k.startswith(("prune.rates.", "prune.layer_rates."))] + ["prune.rates", "prune.layer_rates"]
    for key in keys:
        assert f"| `{key}` |" in config_page, key
    assert "| `prune.fraction` | float | `0.1` | in (0, 1) |" in config_page  # bounds as validate enforces them
    assert all(f"| `{name}` |" in presets_page for name in cfgmod.PRESETS)


def test_the_reference_pages_are_generated_at_build_time_not_copied():
    """A hand-written copy of a generated page would go stale: each page must hold its marker."""
    for name in reference.PAGES:
        assert reference.MARKER.format(name) in (DOCS / "reference" / f"{name}.md").read_text(), name


def test_a_config_field_without_its_meaning_or_a_preset_without_a_note_fails_the_build(monkeypatch):
    @dataclasses.dataclass(frozen=True)
    class Undocumented:
        documented: int = 1
        """A key with its meaning."""
        forgotten: int = 2

    with pytest.raises(ValueError, match="Undocumented.forgotten has no docstring"):
        reference.config_rows(Undocumented)
    monkeypatch.setitem(cfgmod.PRESETS, "new-preset", cfgmod.Config())
    with pytest.raises(ValueError, match="new-preset"):
        reference.presets_markdown()


def test_every_config_field_is_documented_and_every_bound_is_a_real_key():
    sections = reference.config_sections()  # raises for a field without its docstring
    keys = {row[0] for rows in sections.values() for row in rows}
    assert set(cfgmod.BOUNDS) <= keys and set(cfgmod.CHOICES) <= keys


def test_validation_enforces_the_bounds_the_reference_prints():
    for key, bounds in cfgmod.BOUNDS.items():
        if key.startswith("prune.") and key.endswith("rates"):
            continue  # table entries: tested in test_config
        outside = bounds.high + 1 if bounds.high is not None else bounds.low - 1
        with pytest.raises(cfgmod.ConfigError, match=re.escape(f"{key}: must be {bounds.text()}")):
            cfgmod.apply_overrides(cfgmod.preset("quick"), {key: str(outside)})


# ---------------------------------------------------------------- the site builds, strictly


def _build(docs_dir: Path, site: Path) -> subprocess.CompletedProcess:
    config = (REPO / "mkdocs.yml").read_text().replace("docs_dir: docs", f"docs_dir: {docs_dir}")
    config = config.replace("scripts/mkdocs_hooks.py", str(REPO / "scripts" / "mkdocs_hooks.py"))
    site.parent.mkdir(parents=True, exist_ok=True)
    (site.parent / "mkdocs.yml").write_text(config)
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(site.parent / "mkdocs.yml"), "-d", str(site)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)


def test_the_site_builds_strictly_with_the_generated_reference_and_a_broken_anchor_fails(tmp_path):
    good = _build(DOCS, tmp_path / "good" / "site")
    assert good.returncode == 0, good.stderr[-3000:]
    html = (tmp_path / "good" / "site" / "reference" / "config" / "index.html").read_text()
    assert "train.initial_epochs" in html and "Epochs of round 0" in html  # made from the dataclasses
    cli_html = (tmp_path / "good" / "site" / "reference" / "cli" / "index.html").read_text()
    assert all(f"lth {name}" in cli_html for name in cli.subcommands(cli.make_parser()))

    broken = tmp_path / "broken" / "docs"
    shutil.copytree(DOCS, broken)
    (broken / "index.md").write_text((broken / "index.md").read_text() + "\n[gone](reference/config.md#no-such-key)\n")
    bad = _build(broken, tmp_path / "broken" / "site")
    assert bad.returncode != 0 and "no-such-key" in bad.stderr


# ---------------------------------------------------------------- documented outputs and commands


def test_every_documented_output_is_what_lth_prints(tmp_path, monkeypatch, data_root):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LTH_DATA_DIR", str(data_root))
    pages = doc_pages()
    assert sum(len(documented_outputs(text)) for text in pages.values()) >= 5  # the errors page, README, ...
    assert mismatched_outputs(pages) == []
    assert list(tmp_path.iterdir()) == []  # bad input wrote nothing


def test_a_changed_documented_error_fails(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    page = ("```text\n$ lth run --preset quick --prune.fraction 1.5\n"
            "lth: error: prune.fraction: must be in (0, 1), got 1.5\n```\n")
    assert mismatched_outputs({"ok.md": page}) == []
    stale = page.replace("must be in (0, 1)", "must lie in (0, 1)")
    assert len(mismatched_outputs({"stale.md": stale})) == 1


def _tutorials() -> list[Path]:
    return sorted((DOCS / "tutorials").glob("*.md"))


def test_the_tutorials_show_commands():
    assert _tutorials() and all(tutorial_commands(p.read_text()) for p in _tutorials())


@pytest.mark.parametrize("page", _tutorials(), ids=lambda p: p.stem)
def test_the_commands_a_tutorial_shows_run_on_tiny_real_data(page, tmp_path, data_root):
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    env = {**os.environ, "LTH_DATA_DIR": str(data_root)}
    for command in tutorial_commands(page.read_text()):
        argv = shlex.split(command)
        if argv[1] in ("run", "compare"):
            argv += TINY
        done = subprocess.run([sys.executable, "-m", "lth", *argv[1:]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{page.name}: `{command}` exited {done.returncode}: {done.stderr[-2000:]}"
