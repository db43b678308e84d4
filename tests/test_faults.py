"""Fault injection (issue 12): each case runs the real `lth` command in a subprocess on a tiny
real-data study, breaks something (a signal, a full or read-only disk, a damaged file, NaN, other
data, a second `lth compare`), and checks that lth says so in one line, exits non-zero, and loses
nothing: the files it had written are byte-for-byte unchanged, or the run resumes to the same
result. The fault table in docs/how-to/resume-and-verify.md lists every case with the test that shows it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import load_tensors, read_rounds_csv, strip_timing, tiny_cli_args
from lth.data import BATCHES_DIRNAME, REQUIRED_FILES
from lth.rundir import RunDir
from lth.signals import stop_on_signals

ROOT = os.geteuid() == 0  # may mount a size-limited tmpfs and read-only bind mounts


def lth(*args: str, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lth", *args], capture_output=True, text=True, env=env, timeout=600, **kw)


def one_line_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """The process failed with `code` and said why in one `lth: error:` line (notes aside), no traceback."""
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("lth: note:")]
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("lth: error:") and "Traceback" not in proc.stderr, proc.stderr
    assert all(n in lines[0] for n in needles), (needles, lines[0])
    return lines[0]


def snapshot(root: Path) -> dict[str, str]:
    """Every file's sha256 (the lock file aside): what "nothing lost, nothing changed" compares."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    env = dict(env or os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "lth", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def signal_when(proc: subprocess.Popen, ready, signum: int = signal.SIGTERM, timeout: float = 300) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"finished before the signal: {proc.communicate()[1]}"
        assert time.monotonic() < deadline, "timed out waiting for the moment to signal"
        time.sleep(0.01)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def same_results(run: RunDir, ref: RunDir, rounds: int = 3) -> None:
    """Bit-identical to the uninterrupted reference (same machine, same seed)."""
    for r in range(rounds):
        for kind in ("mask", "best", "final"):
            a, b = load_tensors(run.checkpoint(r, kind)), load_tensors(ref.checkpoint(r, kind))
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (r, kind)
    assert strip_timing(read_rounds_csv(run.rounds)) == strip_timing(read_rounds_csv(ref.rounds))


def no_data_env(tmp_path: Path) -> dict[str, str]:
    """An environment in which lth could only find CIFAR-10 by downloading it (and cannot)."""
    env = {k: v for k, v in os.environ.items() if k != "LTH_DATA_DIR"}
    return env | {"XDG_CACHE_HOME": str(tmp_path / "empty-cache"), "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}


@pytest.fixture(scope="module")
def stopped(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    """A tiny study stopped by SIGTERM in round 1 (longer rounds, so the signal lands there):
    round 0 committed, a resume state in round 1. Cases damage copies of it."""
    run = RunDir(tmp_path_factory.mktemp("stopped") / "run")
    proc = start("run", *tiny_cli_args(), "--train.epochs", "60", "--out", str(run.root), "--data-dir", str(data_root), "--no-progress")
    in_round_1 = lambda: run.resume_state.exists() and run.metrics.exists() and '"round": 1' in run.metrics.read_text()  # noqa: E731
    code, err = signal_when(proc, in_round_1)
    assert code == 128 + signal.SIGTERM and f"lth resume {run.root}" in err, err
    assert len(read_rounds_csv(run.rounds)) == 1 and run.load_resume()[0] == 1
    return run


def copy_of(run: RunDir, dest: Path) -> RunDir:
    shutil.copytree(run.root, dest, ignore=shutil.ignore_patterns(".lock"))
    return RunDir(dest)


def test_sigterm_saves_at_once_and_resume_alone_finds_the_data(tiny_run, data_root, tmp_path):
    """Killed politely mid-round (as Slurm preempts), then resumed with no --data-dir and no
    $LTH_DATA_DIR: the run's manifest says where its data was, and it ends bit-identical."""
    run, env = RunDir(tmp_path / "run"), no_data_env(tmp_path)
    proc = start("run", *tiny_cli_args(), "--out", str(run.root), "--data-dir", str(data_root), "--no-progress", env=env)
    metrics_lines = lambda: run.metrics.exists() and len(run.metrics.read_text().splitlines()) >= 3  # noqa: E731
    code, err = signal_when(proc, metrics_lines)
    assert code == 143 and "stopped by SIGTERM at round" in err and f"lth resume {run.root}" in err, err
    manifest = json.loads(run.manifest.read_text())
    assert manifest["data"]["dir"] == str(data_root / BATCHES_DIRNAME) and manifest["data"]["fingerprint"].startswith("sha256:")
    done = lth("resume", str(run.root), "--no-progress", env=env)
    assert done.returncode == 0, done.stderr
    same_results(run, RunDir(tiny_run.run_dir))


def test_a_second_signal_exits_at_once():
    """The first SIGTERM only asks (the loop saves, then stops); the handlers are then the
    defaults again, so a second SIGTERM kills and a second SIGINT raises KeyboardInterrupt."""
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with stop_on_signals() as stop:
        assert not stop()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop() and stop.signum == signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == previous  # restored on the way out


def test_other_data_is_refused(stopped, data_root, tmp_path):
    """The same files but one label changed: another fingerprint, refused in one line."""
    other = tmp_path / "data" / BATCHES_DIRNAME
    other.mkdir(parents=True)
    for name in REQUIRED_FILES:
        (other / name).symlink_to(data_root / BATCHES_DIRNAME / name)
    with open(data_root / BATCHES_DIRNAME / "data_batch_1", "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    batch[b"labels"][0] = (batch[b"labels"][0] + 1) % 10
    (other / "data_batch_1").unlink()
    (other / "data_batch_1").write_bytes(pickle.dumps(batch))
    run = copy_of(stopped, tmp_path / "run")
    before = snapshot(run.root)
    one_line_error(lth("resume", str(run.root), "--data-dir", str(other.parent)), 2, "other data", "fingerprint", "--data-dir")
    assert snapshot(run.root) == before


def test_divergence_keeps_the_last_good_position_and_resume_may_lower_the_lr(stopped, data_root, tmp_path):
    run = copy_of(stopped, tmp_path / "run")
    before = snapshot(run.root)
    err = one_line_error(lth("resume", str(run.root), "--train.lr", "1e30"), 3, "diverged", "round 1, epoch", "step", "--train.lr")
    assert "not finite" in err or "nan" in err or "inf" in err
    after = snapshot(run.root)
    changed = {k for k in before if after.get(k) != before[k]}
    assert changed <= {"config.toml", "manifest.json", "checksums.sha256"}, changed  # the position, rounds, checkpoints untouched
    history = json.loads(run.manifest.read_text())["history"]
    assert history[-1]["train.lr"] == [1e-3, 1e30] and history[-1]["round"] == 1
    one_line_error(lth("resume", str(run.root), "--train.epochs", "3"), 2, "only --train.lr")
    done = lth("resume", str(run.root), "--train.lr", "1e-3", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert [h["train.lr"] for h in json.loads(run.manifest.read_text())["history"]] == [[1e-3, 1e30], [1e30, 1e-3]]
    assert lth("verify", str(run.root)).returncode == 0


@contextlib.contextmanager
def small_disk(path: Path, megabytes: int):
    """A directory that runs out of room: a tmpfs of that size as root, else a file-size limit
    for the child (writes then fail with EFBIG instead of ENOSPC)."""
    path.mkdir()
    if ROOT:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)], check=True)
        try:
            yield None
        finally:
            subprocess.run(["umount", "-l", str(path)], check=True)
    else:
        limit = megabytes // 3 * 2**20  # the resume state (about 18 MB) cannot be written
        yield lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_disk_full_is_one_line_and_the_run_resumes_from_what_was_written(tiny_run, data_root, tmp_path):
    """32 MB hold θ0, round 0's mask and one resume state (18 MB), not a second one beside it."""
    with small_disk(tmp_path / "small", 32) as limit:
        out = tmp_path / "small" / "run"
        proc = subprocess.run([sys.executable, "-m", "lth", "run", *tiny_cli_args(), "--out", str(out), "--data-dir", str(data_root),
                               "--no-progress"], capture_output=True, text=True, preexec_fn=limit, timeout=600)
        one_line_error(proc, 1, "free space", "intact")
        assert "No space left on device" in proc.stderr or "File too large" in proc.stderr
        assert not [p for p in out.rglob("*.tmp")], "a torn temporary file was left behind"
        run = copy_of(RunDir(out), tmp_path / "moved")
    assert lth("verify", str(run.root)).returncode == 0
    done = lth("resume", str(run.root), "--data-dir", str(data_root), "--no-progress")
    assert done.returncode == 0, done.stderr
    same_results(run, RunDir(tiny_run.run_dir))


@contextlib.contextmanager
def read_only(path: Path):
    if ROOT:  # root ignores permission bits: a read-only bind mount
        subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
        subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], check=True)
        try:
            yield
        finally:
            subprocess.run(["umount", "-l", str(path)], check=True)
    else:
        modes = {p: p.stat().st_mode for p in [path, *path.rglob("*")]}
        for p in modes:
            p.chmod(modes[p] & ~0o222)
        try:
            yield
        finally:
            for p, mode in modes.items():
                p.chmod(mode)


def test_read_only_output_is_one_line_and_changes_nothing(stopped, data_root, tmp_path):
    holder = tmp_path / "ro"
    holder.mkdir()
    run = copy_of(stopped, holder / "run")
    before = snapshot(holder)
    with read_only(holder):
        one_line_error(lth("resume", str(run.root), "--data-dir", str(data_root)), 1, str(run.root))
        one_line_error(lth("run", *tiny_cli_args(), "--out", str(holder / "new"), "--data-dir", str(data_root)), 1, str(holder / "new"))
    assert snapshot(holder) == before


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {  # file → how it is damaged
    "checkpoints/init.safetensors": _flip,
    "checkpoints/round_00/best.safetensors": _truncate,
    "checkpoints/round_00/mask.safetensors": _flip,
    "checkpoints/resume/state.safetensors": _truncate,
    "config.toml": lambda p: p.write_text("name = \"tiny\"\n[train\nlr = "),
    "manifest.json": _truncate,
    "rounds.csv": lambda p: p.write_text(p.read_text()[:-20]),
    "metrics.jsonl": lambda p: p.write_text("{not json\n" + p.read_text()),
}


@pytest.mark.parametrize("name", list(DAMAGE))
def test_a_damaged_file_is_named_refused_and_skipped(stopped, data_root, tmp_path, name):
    """`lth resume` names the file and refuses (nothing retrained over it); `lth verify` fails
    naming it; `lth show` and `lth report` list the run as skipped and go on with the others."""
    good = copy_of(stopped, tmp_path / "study" / "good")
    run = copy_of(stopped, tmp_path / "study" / "damaged")
    DAMAGE[name](run.root / name)
    before = snapshot(run.root)
    file_name = Path(name).name
    one_line_error(lth("resume", str(run.root), "--data-dir", str(data_root)), 2, file_name)
    assert snapshot(run.root) == before
    checked = lth("verify", str(tmp_path / "study"))
    assert checked.returncode == 1 and f"FAIL {run.root}" in checked.stdout and file_name in checked.stdout, checked.stdout
    assert f"ok   {good.root}" in checked.stdout
    shown = lth("show", str(good.root), str(run.root))
    assert shown.returncode == 0 and f"skipped {run.root}" in shown.stdout and "Traceback" not in shown.stderr, shown
    reported = lth("report", str(tmp_path / "study"), "--out", str(tmp_path / "report"))
    assert reported.returncode == 0, reported.stderr
    assert file_name in (tmp_path / "report" / "report.md").read_text()
    assert snapshot(run.root) == before


def test_two_compares_on_one_study_share_the_cells(data_root, tmp_path):
    """Started together, each cell is run by exactly one of them; both finish; the study is whole."""
    spec = tmp_path / "study.toml"
    overrides = {k: v for k, v in zip(tiny_cli_args()[2::2], tiny_cli_args()[3::2])}
    overrides = {k.removeprefix("--"): v for k, v in overrides.items()} | {"prune.rounds": "1"}
    spec.write_text("name = \"two\"\nbase = \"quick\"\nseeds = [0, 1]\ncriteria = [\"high-movement\", \"magnitude\"]\n[overrides]\n"
                    + "".join(f'"{k}" = "{v}"\n' for k, v in overrides.items()))
    args = ("compare", "--spec", str(spec), "--out", str(tmp_path / "study"), "--data-dir", str(data_root), "--no-progress", "--no-energy")
    procs = [start(*args) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    logs = "".join(out for out, _ in outputs)
    # Every round of the 4 cells (2 rounds each) was trained exactly once, by one of the two; a
    # cell that one found finished by the other when it got to it only reopened it.
    assert logs.count("round 0/1:") == 4 and logs.count("round 1/1:") == 4, logs
    checked = lth("verify", str(tmp_path / "study"))
    assert checked.returncode == 0 and checked.stdout.count("ok   ") == 4, checked.stdout


@pytest.mark.parametrize("text, needle", [
    ("[train]\nlr = 1e-3\nwarp = 9\n", "warp"),
    ("prune.rounds = 5\n" + "# padding\n" * 200_000, "larger than"),
    ('name = "a\\u0000b"\n', "name"),
    ("[train]\nepochs = 1000000000\n", "train.epochs"),
    ('[prune]\ncriterion = "random"\nmatch = "/nonexistent/run"\n', "prune.match"),
])
def test_an_untrusted_config_file_gets_one_line(data_root, tmp_path, text, needle):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    out = tmp_path / "run"
    one_line_error(lth("run", "--preset", "quick", "--config", str(config), "--out", str(out), "--data-dir", str(data_root)), 2, needle)
    assert not out.exists()


def test_prune_match_may_not_name_the_run_itself(data_root, tmp_path):
    out = tmp_path / "run"
    proc = lth("run", *tiny_cli_args(), "--prune.criterion", "random", "--prune.match", str(tmp_path / "." / "run"), "--out", str(out),
               "--data-dir", str(data_root))
    one_line_error(proc, 2, "prune.match", "this run itself")
    assert not out.exists()

