"""Fetch, verify and unpack data files without ever leaving a half-written file behind.

Every writer goes through `write_atomically`: bytes land in `<dest>.part`, are checked, and
only then renamed onto `<dest>` (an atomic rename on one filesystem). A crash, a dropped
connection or a failed checksum leaves no `<dest>` and no `.part`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from reformer_lab.data.errors import DataError

CHUNK_BYTES = 1 << 20
PROGRESS_EVERY_S = 2.0


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def write_atomically(
    dest: Path,
    write: Callable[[BinaryIO], None],
    check: Callable[[Path], None] | None = None,
) -> Path:
    """Run `write(file)` on `<dest>.part`, then `check(part)`, then rename it to `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    try:
        with part.open("wb") as out:
            write(out)
        if check is not None:
            check(part)
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)
    return dest


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(
    path: Path,
    *,
    expected_size: int | None = None,
    expected_md5: str | None = None,
    fix: str = "",
) -> None:
    """Raise DataError unless `path` has exactly `expected_size` bytes and `expected_md5`."""
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        raise DataError(
            f"{path} has {size:,} bytes, expected exactly {expected_size:,}: the file is "
            f"truncated or not the expected one. {fix}"
        )
    if expected_md5 is not None:
        found = md5_of(path)
        if found != expected_md5.lower():
            raise DataError(
                f"{path} has md5 {found}, expected {expected_md5}: the file is corrupt, "
                f"truncated or not the expected one. {fix}"
            )


def fetch(
    url: str,
    dest: Path,
    *,
    expected_size: int | None = None,
    expected_md5: str | None = None,
    fix: str = "",
) -> Path:
    """Download `url` to `dest` (via `<dest>.part`), printing progress, then verify it.

    `fix` is appended to every error: it should say how to get the file by hand and which
    config key to point at it.
    """
    print(f"downloading {url} -> {dest}", flush=True)

    def download(out: BinaryIO) -> None:
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                announced = response.headers.get("Content-Length")
                total = int(announced) if announced else expected_size
                received = copy_with_progress(response, out, total)
        except (urllib.error.URLError, OSError) as err:
            raise DataError(f"could not download {url}: {err}. {fix}") from err
        if announced and received != int(announced):
            raise DataError(
                f"download of {url} stopped after {received:,} of {int(announced):,} bytes. {fix}"
            )

    def check(part: Path) -> None:
        verify_file(part, expected_size=expected_size, expected_md5=expected_md5, fix=fix)

    return write_atomically(dest, download, check)


def copy_with_progress(source: BinaryIO, out: BinaryIO, total: int | None) -> int:
    received, last_print = 0, time.monotonic()
    while chunk := source.read(CHUNK_BYTES):
        out.write(chunk)
        received += len(chunk)
        if time.monotonic() - last_print >= PROGRESS_EVERY_S:
            print(f"  {progress_line(received, total)}", flush=True)
            last_print = time.monotonic()
    print(f"  {progress_line(received, total)} done", flush=True)
    return received


def progress_line(received: int, total: int | None) -> str:
    if not total:
        return f"{received / 1e6:.1f} MB"
    return f"{received / 1e6:.1f} / {total / 1e6:.1f} MB ({100 * received / total:.0f}%)"


def extract_zip_member(
    archive_path: Path,
    member: str,
    dest: Path,
    check: Callable[[Path], None] | None = None,
    fix: str = "",
) -> Path:
    """Unpack one member of a zip to `dest` atomically; a bad or incomplete zip is a DataError."""
    try:
        with zipfile.ZipFile(archive_path) as archive:
            if member not in archive.namelist():
                raise DataError(
                    f"{archive_path} holds {archive.namelist()[:5]}, not a member named "
                    f"{member!r}. {fix}"
                )
            with archive.open(member) as source:
                write_atomically(
                    dest, lambda out: shutil.copyfileobj(source, out, CHUNK_BYTES), check
                )
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise DataError(f"{archive_path} is not a complete zip archive ({err}). {fix}") from err
    return dest
