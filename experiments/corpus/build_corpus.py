"""Builds the reduced-scale text corpus of studies 2-4: Vim's documentation as one byte file.

    python experiments/corpus/build_corpus.py            # -> data/vimdoc.txt + vimdoc.json
    python experiments/corpus/build_corpus.py --source /usr/share/vim/vim91/doc --overwrite

The `*.txt` files of the source folder (not recursive) are concatenated as bytes in sorted
name order, the same order `data=text_file` uses for a folder. The corpus is written to a
temporary file and renamed, so a failed build leaves no partial file and an earlier corpus
untouched. Its sha256, size and file count go to `vimdoc.json` next to this script (committed):
a rebuild that gives other bytes than the recorded ones (another vim-runtime version) stops
and says so, unless `--overwrite` records the new corpus.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SOURCE = Path("/usr/share/vim/vim90/doc")
DEFAULT_OUT = REPO / "data" / "vimdoc.txt"
DEFAULT_MANIFEST = Path(__file__).resolve().parent / "vimdoc.json"
COMPARED = ("sha256", "n_bytes", "n_files")
"""Manifest fields that must agree for two builds to be the same corpus."""
READABLE = 0o644  # mkstemp creates 0600 files; the corpus and manifest are for everyone to read


class CorpusError(RuntimeError):
    """Missing source, no input files, or a corpus that differs from the recorded one."""


def source_files(source: Path, pattern: str = "*.txt") -> list[Path]:
    """The files of `source` matching `pattern`, sorted by name; CorpusError if there are none."""
    if not source.is_dir():
        raise CorpusError(
            f"{source} does not exist: install Vim's runtime files "
            f"(Debian/Ubuntu: `sudo apt-get install vim-runtime`; Fedora: `vim-common`) "
            f"or pass --source <the doc/ folder of your Vim runtime>"
        )
    files = sorted((p for p in source.glob(pattern) if p.is_file()), key=lambda p: p.name)
    if not files:
        raise CorpusError(f"{source} holds no {pattern} files: pass --source <a Vim doc/ folder>")
    return files


def read_file(path: Path) -> bytes:
    return path.read_bytes()


def build(
    source: Path,
    out: Path,
    manifest: Path,
    pattern: str = "*.txt",
    overwrite: bool = False,
) -> dict:
    """Concatenates the sorted `pattern` files of `source` into `out`; returns the manifest.

    Nothing is written unless the whole corpus was read and, without `overwrite`, it matches
    an existing manifest (or there is none).
    """
    files = source_files(source, pattern)
    out.parent.mkdir(parents=True, exist_ok=True)
    digest, n_bytes = hashlib.sha256(), 0
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            for path in files:
                data = read_file(path)
                f.write(data)
                digest.update(data)
                n_bytes += len(data)
            f.flush()
            os.fsync(f.fileno())
        record = {
            "corpus": out.name,
            "source": str(source),
            "pattern": pattern,
            "package": package_version(source),
            "n_files": len(files),
            "n_bytes": n_bytes,
            "sha256": digest.hexdigest(),
            "files": [p.name for p in files],
        }
        check_against_manifest(record, manifest, overwrite)
        os.chmod(tmp, READABLE)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    write_json_atomically(manifest, record)
    return record


def check_against_manifest(record: dict, manifest: Path, overwrite: bool) -> None:
    if overwrite or not manifest.is_file():
        return
    recorded = json.loads(manifest.read_text())
    differ = [k for k in COMPARED if recorded.get(k) != record[k]]
    if differ:
        shown = ", ".join(f"{k} {recorded.get(k)} -> {record[k]}" for k in differ)
        raise CorpusError(
            f"this build differs from {manifest} ({shown}; recorded from "
            f"{recorded.get('package')}, now {record['package']}): results made on the "
            f"two corpora are not comparable. Nothing was written; pass --overwrite to "
            f"record the new corpus"
        )


def package_version(source: Path) -> str | None:
    """`<package> <version>` owning the source folder per dpkg, or None where there is no dpkg."""
    try:
        owner = subprocess.run(
            ["dpkg-query", "-S", str(source)], capture_output=True, text=True, timeout=10
        )
        package = owner.stdout.split(":", 1)[0].strip() if owner.returncode == 0 else ""
        if not package or "," in package:
            return None
        version = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return f"{package} {version.stdout.strip()}" if version.returncode == 0 else package
    except (OSError, subprocess.SubprocessError):
        return None


def write_json_atomically(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1)
            f.write("\n")
        os.chmod(tmp, READABLE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="Vim's doc/ folder")
    parser.add_argument("--pattern", default="*.txt", help="which files of --source")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the corpus file")
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument(
        "--overwrite", action="store_true", help="record a corpus that differs from --manifest"
    )
    args = parser.parse_args(argv)
    try:
        record = build(args.source, args.out, args.manifest, args.pattern, args.overwrite)
    except CorpusError as error:
        print(f"build_corpus: error: {error}", file=sys.stderr)
        return 1
    print(
        f"{args.out}: {record['n_bytes']} bytes from {record['n_files']} files of "
        f"{record['source']} ({record['package']}), sha256 {record['sha256']}; "
        f"manifest {args.manifest}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
