"""The command line: one-line errors with exit 2 and nothing written; run-dir protection; show."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import tiny_cli_args
from lth.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--train.epochs", "0"], "train.epochs: must be between 1 and 100000"),
        (["--prune.fraction", "1.5"], "prune.fraction: must be in (0, 1)"),
        (["--prune.fraction", "abc"], "prune.fraction: expected float"),
        (["--prune.criterion", "nope"], "unknown criterion 'nope'"),
        (["--train.epoch", "3"], "did you mean --train.epochs?"),
        (["--preset", "huge"], "unknown preset 'huge'"),
        (["--train.epochs"], "needs a value"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(capsys, tmp_path, argv, message):
    out = tmp_path / "run"
    code, stdout, stderr = run_cli(capsys, "run", *argv, "--out", str(out))
    assert code == 2
    assert message in stderr and stderr.count("\n") == 1 and stderr.startswith("lth: error:")
    assert not out.exists()


def test_bad_config_file(capsys, tmp_path):
    bad = tmp_path / "c.toml"
    bad.write_text('[train]\nepochs = "many"\n')
    code, _, stderr = run_cli(capsys, "run", "--config", str(bad), "--out", str(tmp_path / "run"))
    assert code == 2 and "train.epochs: expected int" in stderr
    assert not (tmp_path / "run").exists()


def test_config_command_prints_resolved_toml(capsys, tmp_path):
    code, stdout, _ = run_cli(capsys, "config", "--preset", "quick", "--train.epochs", "2", "--seed", "5")
    assert code == 0 and "epochs = 2" in stdout and "seed = 5" in stdout
    saved = tmp_path / "c.toml"
    saved.write_text(stdout)
    code, again, _ = run_cli(capsys, "config", "--config", str(saved))
    assert again == stdout


def test_existing_run_dir_is_protected(capsys, tiny_run, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in tiny_run.run_dir.rglob("*") if p.is_file()}
    code, _, stderr = run_cli(capsys, "run", *tiny_cli_args(), "--out", str(tiny_run.run_dir))
    assert code == 2 and "--resume" in stderr and "--force" in stderr
    # Resuming with a different config is refused too.
    code, _, stderr = run_cli(capsys, "run", *tiny_cli_args(), "--train.epochs", "9", "--out", str(tiny_run.run_dir), "--resume")
    assert code == 2 and "different config" in stderr
    after = {p: p.stat().st_mtime_ns for p in tiny_run.run_dir.rglob("*") if p.is_file()}
    assert before == after


def test_force_refuses_a_directory_that_is_not_a_run(capsys, tmp_path):
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("do not delete")
    code, _, stderr = run_cli(capsys, "run", "--preset", "quick", "--out", str(precious), "--force")
    assert code == 2 and "not an lth run directory" in stderr
    assert (precious / "chapter1.tex").read_text() == "do not delete"


def test_resume_of_a_missing_run(capsys, tmp_path):
    code, _, stderr = run_cli(capsys, "resume", str(tmp_path / "nothing"))
    assert code == 2 and "not an lth run directory" in stderr


def test_completed_run_resumes_as_a_no_op_and_show_prints_the_table(capsys, tiny_run, data_root):
    code, stdout, _ = run_cli(capsys, "resume", str(tiny_run.run_dir), "--data-dir", str(data_root), "--no-progress")
    assert code == 0 and "run directory" in stdout
    code, stdout, _ = run_cli(capsys, "show", str(tiny_run.run_dir))
    lines = stdout.strip().splitlines()
    assert code == 0 and lines[0].split()[:3] == ["round", "remain", "%"]
    assert len(lines) == 1 + 3 and lines[1].split()[1] == "100.0"


def test_show_of_a_missing_run(capsys, tmp_path):
    code, _, stderr = run_cli(capsys, "show", str(tmp_path))
    assert code == 2 and "no run directories under" in stderr


def test_console_script_and_help():
    done = subprocess.run([sys.executable, "-m", "lth", "run", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--train.epochs" in done.stdout and "DESTRUCTIVE" in done.stdout


def test_table_entries_and_new_keys_from_the_command_line(capsys):
    code, stdout, _ = run_cli(capsys, "config", "--preset", "fc-conv4", "--prune.rates.output", "0", "--train.eval_every", "50", "--rewind", "epoch:1")
    assert code == 0 and "output = 0.0" in stdout and "conv = 0.1" in stdout and 'eval_every = "50"' in stdout and 'rewind = "epoch:1"' in stdout


def test_bad_replicates(capsys, tmp_path):
    code, _, stderr = run_cli(capsys, "run", "--preset", "quick", "--replicates", "0", "--out", str(tmp_path / "r"))
    assert code == 2 and "--replicates: must be >= 1" in stderr
    assert not (tmp_path / "r").exists()


def test_missing_data_fails_cleanly_and_leaves_no_run_dir(capsys, tmp_path):
    empty = tmp_path / "no-data"
    empty.mkdir()
    out = tmp_path / "run"
    code, _, stderr = run_cli(capsys, "run", "--preset", "quick", "--data-dir", str(empty), "--out", str(out), "--no-energy")
    assert code == 2 and stderr.startswith("lth: error:") and stderr.count("\n") == 1
    assert not out.exists()


def test_version_names_the_installed_release():
    from importlib.metadata import version

    done = subprocess.run([sys.executable, "-m", "lth", "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == f"lth {version('lth')}"
