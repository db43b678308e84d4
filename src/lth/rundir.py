"""The run directory (DESIGN §5), and the only module that knows its layout. Every file is
written atomically (temporary file, fsync, rename): a kill leaves the old file or the new one.
`rounds.csv` is a round's commit point, written after its checkpoints. torch is imported only
where tensors are read or written, so that reports can be drawn without it."""

from __future__ import annotations

import csv
import dataclasses
import fcntl
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lth import config as cfgmod

RESUME_FORMAT = 2  # bump when the resume file's layout changes; older states are refused
INT_COLUMNS = {"round", "pruned", "weights_remaining", "weights_prunable", "best_epoch", "best_step"}
TEXT_COLUMNS = {"criterion", "rewind", "energy_method"}
REQUIRED_COLUMNS = ("round", "remaining_pct", "test_acc_best", "test_acc_final")


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked; the message is one line saying what to do."""


class RunDirBusy(RunDirError):
    """Another process holds the run directory's lock."""

    def __init__(self, root: Path) -> None:
        super().__init__(f"{root} is in use by another lth process; wait for it or choose another --out")
        self.root = root


def atomic_write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # as an ordinary file would be, not mkstemp's 0600
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    with suppress(OSError):  # make the rename itself durable where directories can be opened
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _parse_cell(column: str, text: str) -> Any:
    if column in TEXT_COLUMNS:
        return text
    if column == "pruning_skipped":
        return text.strip().lower() in ("true", "1")
    if text == "":
        return None
    return int(text) if column in INT_COLUMNS else float(text)


@dataclass(frozen=True)
class RunDir:
    """One study's run directory: its paths, typed reading and atomic writing. Creates nothing
    by itself."""

    root: Path

    # ------------------------------------------------------------ layout
    config = property(lambda self: self.root / "config.toml")
    manifest = property(lambda self: self.root / "manifest.json")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    rounds = property(lambda self: self.root / "rounds.csv")
    checkpoints = property(lambda self: self.root / "checkpoints")
    init = property(lambda self: self.checkpoints / "init.safetensors")
    rewind_point = property(lambda self: self.checkpoints / "rewind.safetensors")  # `rewind = "epoch:K"` or "iter:K": the weights
    rewind_optimizer = property(lambda self: self.checkpoints / "rewind_optimizer.safetensors")  # "iter:K": the optimizer state at K
    resume_state = property(lambda self: self.checkpoints / "resume" / "state.safetensors")
    checksums = property(lambda self: self.root / "checksums.sha256")  # `sha256sum -c` format: every file but the log and resume state
    stability = property(lambda self: self.root / "stability.csv")  # `lth stability`: one row per round, pair and rewind point
    track_state = property(lambda self: self.root / "track.json")  # lth.track: each tracker's run id and last step sent
    tensorboard = property(lambda self: self.root / "tensorboard")  # lth.track: TensorBoard's event files
    stability_resume = property(lambda self: self.checkpoints / "resume" / "stability.safetensors")  # `lth stability`: the copies in training

    def checkpoint(self, round_index: int, kind: str) -> Path:
        """`kind` is "best", "final" or "mask"."""
        return self.checkpoints / f"round_{round_index:02d}" / f"{kind}.safetensors"

    best = lambda self, r: self.checkpoint(r, "best")  # noqa: E731 - round r's weights and mask
    final = lambda self, r: self.checkpoint(r, "final")  # noqa: E731
    mask = lambda self, r: self.checkpoint(r, "mask")  # noqa: E731

    def is_run(self) -> bool:
        return self.config.is_file() and self.manifest.is_file()

    def require_run(self) -> None:
        """The one-line refusal of a path that is not a run, for every command that reads one."""
        if not self.is_run():
            raise RunDirError(f"{self.root} is not an lth run directory (no {self.config.name}/{self.manifest.name}); check the path")

    def in_use(self) -> bool:
        """Whether another process holds the lock (it may be writing the first files right now)."""
        if not (self.root / ".lock").is_file():
            return False
        try:
            with open(self.root / ".lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(lock, fcntl.LOCK_UN)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False

    # ------------------------------------------------------------ reading
    def read_config(self) -> cfgmod.Config:
        return cfgmod.load(self.config)

    def read_manifest(self) -> dict[str, Any]:
        try:
            return json.loads(self.manifest.read_text())
        except (OSError, ValueError) as exc:
            raise RunDirError(f"{self.manifest}: unreadable ({type(exc).__name__}); the run directory is damaged") from None

    def read_rounds(self) -> list[dict[str, Any]]:
        """The committed rounds, typed and in order; [] before the first commit. A torn or
        malformed table raises RunDirError naming the file and the line."""
        if not self.rounds.is_file():
            return []
        file = self.rounds
        try:
            lines = [row for row in csv.reader(io.StringIO(file.read_text())) if row]
        except (csv.Error, UnicodeDecodeError, OSError) as exc:
            raise RunDirError(f"{file}: unreadable CSV ({exc})") from None
        if not lines:
            raise RunDirError(f"{file}: empty file (no header)")
        header, body = lines[0], lines[1:]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise RunDirError(f"{file}: missing column(s) {', '.join(missing)}")
        rows = []
        for number, cells in enumerate(body, start=2):
            if len(cells) != len(header):
                raise RunDirError(f"{file}: line {number} has {len(cells)} fields, the header {len(header)} (truncated?)")
            try:
                rows.append({c: _parse_cell(c, v) for c, v in zip(header, cells)})
            except ValueError as exc:
                raise RunDirError(f"{file}: line {number} has a non-numeric value ({exc})") from None
        if [r["round"] for r in rows] != list(range(len(rows))):
            raise RunDirError(f"{file}: rounds are not 0, 1, 2, ... in order")
        return rows

    def read_metrics(self) -> list[dict[str, Any]]:
        """One row per evaluation. A torn last line (a crash mid-append) is dropped; an
        evaluation repeated after a resume keeps its last line."""
        rows: dict[tuple[Any, Any], dict[str, Any]] = {}
        if self.metrics.is_file():
            lines = self.metrics.read_text(errors="replace").splitlines()
            for number, line in enumerate(lines, start=1):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    if number == len(lines):
                        continue
                    raise RunDirError(f"{self.metrics}: line {number} is not JSON (damaged, not a torn last line)") from None
                if not isinstance(row, dict):
                    raise RunDirError(f"{self.metrics}: line {number} is not a JSON object (damaged)")
                rows.pop(key := (row.get("round"), row.get("step", row.get("epoch"))), None)
                rows[key] = row
        return list(rows.values())

    def read_checksums(self) -> dict[str, set[str]]:
        """Recorded sha256 of each file, by path relative to the run directory. A file being
        replaced has its old and new digest recorded until the replacement is in place, so a
        kill at any moment leaves every file matching one of its digests."""
        if not self.checksums.is_file():
            return {}
        sums: dict[str, set[str]] = {}
        for number, line in enumerate(self.checksums.read_text(errors="replace").splitlines(), start=1):
            digest, sep, name = line.partition("  ")
            if not sep or len(digest) != 64 or not name:
                raise RunDirError(f"{self.checksums}: line {number} is not '<sha256>  <file>' (damaged?)")
            sums.setdefault(name, set()).add(digest)
        return sums

    def checksum_problems(self) -> list[str]:
        """One line per recorded file that is missing or no longer matches its checksum."""
        problems = []
        for name, digests in self.read_checksums().items():
            path = self.root / name
            if not path.is_file():
                problems.append(f"{path}: missing (its checksum is recorded)")
            elif hashlib.sha256(path.read_bytes()).hexdigest() not in digests:
                problems.append(f"{path}: checksum mismatch, the file was changed or damaged")
        return problems

    def _write(self, path: Path, data: bytes | str) -> None:
        """Atomic write with its checksum recorded (old and new digest while it is replaced)."""
        data = data.encode() if isinstance(data, str) else data
        name, digest, sums = str(path.relative_to(self.root)), hashlib.sha256(data).hexdigest(), self.read_checksums()
        lines = lambda sums: "".join(f"{d}  {n}\n" for n, ds in sorted(sums.items()) for d in sorted(ds))  # noqa: E731
        atomic_write(self.checksums, lines({**sums, name: sums.get(name, set()) | {digest}}))
        atomic_write(path, data)
        atomic_write(self.checksums, lines({**sums, name: {digest}}))

    def load(self, path: Path) -> dict[str, Any]:
        """Tensors of one checkpoint, as torch tensors, checked against its recorded checksum: a
        damaged file raises RunDirError naming it, and is never trained on."""
        return self._load(path)[0]

    def _load(self, path: Path) -> tuple[dict[str, Any], dict[str, str]]:
        """(tensors, header metadata) of one checkpoint, read once and checked as `load` says."""
        from safetensors.torch import load

        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise RunDirError(f"{path}: missing; the run directory is damaged (lth verify {self.root} lists what is wrong)") from None
        recorded = self.read_checksums().get(str(path.relative_to(self.root)))
        if recorded is not None and hashlib.sha256(data).hexdigest() not in recorded:
            raise RunDirError(f"{path}: checksum mismatch, the file was changed or damaged; restore it or start the run again")
        try:
            return load(data), _safetensors_metadata(data)
        except Exception as exc:  # safetensors raises its own types for torn or foreign files
            raise RunDirError(f"{path}: not a readable checkpoint ({type(exc).__name__}); restore it or start the run again") from None

    def save_optimizer(self, path: Path, tensors: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
        """An optimizer state kept with the run (`rewind = "iter:K"`): its tensors and, in the
        header, what reads them back (`train.optimizer_tensors` makes both)."""
        self.save(path, tensors, metadata={"lth_optimizer": json.dumps(dict(meta))})

    def load_optimizer(self, path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        """(tensors, meta) as `save_optimizer` stored them, checked like every checkpoint."""
        tensors, metadata = self._load(path)
        try:
            return tensors, json.loads(metadata["lth_optimizer"])
        except (KeyError, ValueError) as exc:
            raise RunDirError(f"{path}: not an lth optimizer state ({type(exc).__name__}); restore it or start the run again") from None

    # ------------------------------------------------------------ writing
    def save(self, path: Path, tensors: Mapping[str, Any], metadata: dict[str, str] | None = None) -> None:
        from safetensors.torch import save

        contiguous = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        data = save(contiguous, metadata=metadata)
        # Resume states are scratch, replaced at every save and checked as they load.
        atomic_write(path, data) if path.parent == self.resume_state.parent else self._write(path, data)

    def write_config(self, config: cfgmod.Config) -> None:
        self._write(self.config, cfgmod.to_toml(config))

    def write_manifest(self, manifest: Mapping[str, Any]) -> None:
        self._write(self.manifest, json.dumps(dict(manifest), indent=2) + "\n")

    def write_rounds(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Commit: the whole table, rewritten atomically; the round's resume state goes."""
        columns = list(dict.fromkeys(c for row in rows for c in row))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
        self._write(self.rounds, buf.getvalue())
        self.resume_state.unlink(missing_ok=True)

    def write_metrics(self, rows: Iterable[Mapping[str, Any]]) -> None:
        atomic_write(self.metrics, "".join(json.dumps(dict(r)) + "\n" for r in rows))

    def append_metrics(self, rows: Iterable[Mapping[str, Any]]) -> None:
        with open(self.metrics, "a") as f:
            f.writelines(json.dumps(dict(row)) + "\n" for row in rows)
            f.flush()
            os.fsync(f.fileno())

    # ------------------------------------------------------------ resume state
    def save_resume(self, round_index: int, tensors: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
        """The whole position in one file, so it is replaced as one unit."""
        header = {"format": RESUME_FORMAT, "round": round_index, **meta}
        self.save(self.resume_state, tensors, metadata={"lth_resume": json.dumps(header)})

    def load_resume(self) -> tuple[int, dict[str, Any], dict[str, Any]] | None:
        """(round, tensors, meta) of the saved position, or None when there is none."""
        return self._read_resume(tensors=True)

    def _read_resume(self, tensors: bool) -> tuple[int, dict[str, Any], dict[str, Any]] | None:
        path = self.resume_state
        if not path.exists():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {})["lth_resume"])
                loaded = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
        except Exception as exc:  # a foreign or damaged file: say so in one line
            raise RunDirError(f"{path} is not a readable lth resume state ({type(exc).__name__}); delete it to restart the round from its beginning") from None
        if meta.get("format") != RESUME_FORMAT:
            raise RunDirError(
                f"{path} was written by another lth version (resume format {meta.get('format', 1)}, this one reads {RESUME_FORMAT}); "
                "finish the run with that version, or delete the file to restart the round from its beginning"
            )
        return meta.pop("round"), loaded, meta

    def damage(self) -> list[str]:
        """One line per damaged file: the config, the manifest, the metrics log, the resume
        state's header, the checkpoints against their checksums. What `lth resume` refuses, and
        `show` and `report` skip (rounds.csv raises as it is read)."""
        problems = []
        for check in (self.read_config, self.read_manifest, self.read_metrics, lambda: self._read_resume(tensors=False)):
            try:
                check()
            except (RunDirError, cfgmod.ConfigError) as exc:
                problems.append(str(exc))
        return problems + self.checksum_problems()


# ---------------------------------------------------------------- claiming a directory


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors file (8-byte little-endian header length, JSON header)."""
    length = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + length]).get("__metadata__") or {}


def prepare(run: RunDir, config: cfgmod.Config, resume: bool, force: bool) -> None:
    """Check the directory against the request before anything is written."""
    root = run.root
    if root.exists() and not root.is_dir():
        raise RunDirError(f"{root} exists and is not a directory; choose another --out")
    if not (root.exists() and any(p.name != ".lock" for p in root.iterdir())):
        return
    if not run.is_run():
        if run.in_use():
            raise RunDirBusy(root)
        raise RunDirError(f"{root} is not an lth run directory (no config.toml/manifest.json); "
                          + ("refusing to delete it with --force" if force else "choose another --out"))
    if force:
        return
    if not resume:
        raise RunDirError(f"{root} already holds a run; pass --resume to continue it or --force to delete it and start over")
    stored = run.read_config()
    same_but_lr = dataclasses.replace(config, train=dataclasses.replace(config.train, lr=stored.train.lr))  # a resume may change lr
    if cfgmod.computed(stored) != cfgmod.computed(same_but_lr):
        raise RunDirError(f"{root} holds a run with a different config; resume it as it is with `lth resume {root}` or choose another --out")


@contextmanager
def claimed(run: RunDir, force: bool = False) -> Iterator[RunDir]:
    """One writer per run directory: a second process fails instead of interleaving. `force`
    empties it first (after `prepare` said it is a run). A directory this call created is
    removed again if the run stops before writing its config, with the parents it made, so refused
    input leaves nothing."""
    new = [d for d in (run.root, *run.root.parents) if not d.exists()]  # this call's folders, deepest first
    created = bool(new)
    run.root.mkdir(parents=True, exist_ok=True)
    lock_path = run.root / ".lock"
    try:
        with open(lock_path, "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunDirBusy(run.root) from None
            if force and run.is_run():
                for child in run.root.iterdir():
                    if child.name != ".lock":
                        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
            yield run
    finally:
        if created and not run.config.exists():
            lock_path.unlink(missing_ok=True)
            run.checksums.unlink(missing_ok=True)
            for folder in new:  # the run's folder, then the parents it needed, while they are empty
                if folder.exists() and not any(folder.iterdir()):
                    folder.rmdir()
                else:
                    break


# ---------------------------------------------------------------- finding runs


def find_runs(paths: Sequence[str | os.PathLike], depth: int = 3) -> tuple[list[RunDir], list[str]]:
    """Run directories under `paths` (each a run, or a study directory holding runs up to
    `depth` levels down), and one message per path under which none was found. A directory
    holding any of config.toml, rounds.csv or manifest.json counts as a run, so that a broken
    one is listed rather than silently passed over."""
    found: list[RunDir] = []
    problems: list[str] = []
    seen: set[Path] = set()

    def walk(path: Path, left: int) -> list[Path]:
        if any((path / name).is_file() for name in ("config.toml", "rounds.csv", "manifest.json")):
            return [path]
        if left == 0:
            return []
        children = sorted(c for c in path.iterdir() if c.is_dir() and not c.name.startswith(".") and c.name not in ("checkpoints", "report"))
        return [run for child in children for run in walk(child, left - 1)]

    for p in map(Path, paths):
        if not p.is_dir():
            problems.append(f"{p}: does not exist" if not p.exists() else f"{p}: not a directory")
            continue
        runs = walk(p, depth)
        if not runs:
            problems.append(f"{p}: no lth runs found (no config.toml or rounds.csv within {depth} levels)")
        for run in runs:
            if run.resolve() not in seen:
                seen.add(run.resolve())
                found.append(RunDir(run))
    return found, problems
