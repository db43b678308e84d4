"""Where data lives and how it arrives: the data folder, downloads checked against their
published MD5, archives extracted safely. Every data set's files land in a temporary folder
inside the data folder and are moved into place with one ``os.rename``, so an interrupted
download leaves either nothing or a complete folder. The only module of `lth.data` that touches
the network."""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

import platformdirs
from tqdm import tqdm

DATA_ENV_VAR = "LTH_DATA_DIR"


class DataError(Exception):
    """A data problem the user can fix; the message is one line naming the file and the fix."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))  # wrapped exception texts may span lines


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data folder: the argument, else $LTH_DATA_DIR, else the per-user cache (one download per machine).
    Made absolute here, where it is read, so a later chdir or subprocess cannot re-interpret it."""
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get(DATA_ENV_VAR) or Path(platformdirs.user_cache_dir("lth")) / "data"
    return Path(data_dir).expanduser().resolve()


def download(url: str, dest: Path, what: str) -> str:
    """Stream ``url`` to ``dest`` with a progress bar; return the hex MD5 of what was written."""
    md5 = hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(url) as response, open(dest, "wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=f"Downloading {what}", disable=None, leave=False) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    md5.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DataError(f"could not download {url}: {exc}; check the network, or download {what} yourself "
                        f"and point --data-dir / {DATA_ENV_VAR} at the folder that holds it") from exc
    return md5.hexdigest()


def download_verified(urls: Sequence[str], md5: str, dest: Path, what: str) -> None:
    """Download from the first mirror that answers and check the published MD5; a mismatch is an
    error, never a silent retry (a mirror serving other bytes must be noticed)."""
    failures = []
    for url in urls:
        try:
            digest = download(url, dest, what)
        except DataError as exc:
            failures.append(str(exc))
            continue
        if digest != md5.lower():
            raise DataError(f"MD5 mismatch for {url}: got {digest}, expected {md5}; "
                            f"the download is corrupt or not {what}, retry or fetch it by hand")
        return
    raise DataError(failures[-1] if len(failures) == 1 else f"{failures[-1]} (and {len(failures) - 1} other mirror(s) failed)")


def safe_extract(archive: Path, dest: Path, source: str) -> None:
    """Extract only plain files and folders that stay inside ``dest``; the stdlib 'data' filter is a second guard."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                path = PurePosixPath(member.name)
                if path.is_absolute() or member.name.startswith(("/", "\\")) or ".." in path.parts:
                    raise DataError(f"unsafe path {member.name!r} in archive {source}; refusing to extract it")
                if not (member.isfile() or member.isdir()):
                    raise DataError(f"archive {source} has a link or special file {member.name!r}; "
                                    "refusing to extract it")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # pragma: no cover - Python without PEP 706 backports
                tar.extractall(dest, members=members)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"cannot extract archive from {source}: {exc}; "
                        "the archive is damaged or unsafe, retry the download") from exc


def install(root: Path, target: Path, fill: Callable[[Path], Path], missing: Callable[[Path], list[str]], what: str) -> Path:
    """Make `target` (a folder under `root`) complete: `fill(work)` builds it inside a temporary
    folder and returns where it is, which must then miss nothing; one rename moves it into place."""
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".lth-{target.name}-", dir=root, ignore_cleanup_errors=True) as tmp:
        built = fill(Path(tmp))
        if lacking := missing(built):
            raise DataError(f"the download of {what} has no complete {target.name}/ folder (missing {', '.join(lacking)}); "
                            "check the URL points at the official files")
        try:
            os.rename(built, target)
        except OSError as exc:
            if missing(target):  # else another process finished the same download first: use its copy
                raise DataError(f"cannot move the downloaded data to {target}: {exc}; check that folder") from exc
    return target
