"""fetch / write_atomically / extract_zip_member: verified, atomic, never half-written."""

from __future__ import annotations

import hashlib
import zipfile

import pytest

from reformer_lab.data.download import extract_zip_member, fetch, part_path, write_atomically
from reformer_lab.data.errors import DataError

PAYLOAD = bytes(range(256)) * 40  # 10,240 bytes


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "served" / "file.bin"
    path.parent.mkdir()
    path.write_bytes(PAYLOAD)
    return path


def test_fetch_copies_the_file_verifies_and_prints_progress(tmp_path, source, capsys):
    dest = tmp_path / "out" / "file.bin"
    md5 = hashlib.md5(PAYLOAD).hexdigest()
    fetch(source.as_uri(), dest, expected_size=len(PAYLOAD), expected_md5=md5)
    assert dest.read_bytes() == PAYLOAD
    assert not part_path(dest).exists()
    printed = capsys.readouterr().out
    assert source.as_uri() in printed and "done" in printed and "(100%)" in printed


def test_fetch_md5_mismatch_leaves_no_file(tmp_path, source):
    dest = tmp_path / "file.bin"
    with pytest.raises(DataError, match="md5") as err:
        fetch(source.as_uri(), dest, expected_md5="0" * 32, fix="set data.path")
    assert "set data.path" in str(err.value)
    assert not dest.exists() and not part_path(dest).exists()


def test_fetch_size_mismatch_leaves_no_file(tmp_path, source):
    dest = tmp_path / "file.bin"
    with pytest.raises(DataError, match="10,240 bytes, expected exactly 10,241"):
        fetch(source.as_uri(), dest, expected_size=len(PAYLOAD) + 1)
    assert not dest.exists() and not part_path(dest).exists()


def test_fetch_unreachable_url_names_it_and_the_fix(tmp_path):
    url = (tmp_path / "nowhere.zip").as_uri()
    dest = tmp_path / "file.bin"
    with pytest.raises(DataError, match="could not download") as err:
        fetch(url, dest, fix="set data.path=/x")
    assert url in str(err.value) and "data.path=/x" in str(err.value)
    assert not dest.exists() and not part_path(dest).exists()


def test_write_atomically_keeps_the_old_file_when_writing_fails(tmp_path):
    dest = tmp_path / "result.bin"
    dest.write_bytes(b"old")

    def fail_halfway(out):
        out.write(b"new but incomplete")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_atomically(dest, fail_halfway)
    assert dest.read_bytes() == b"old"
    assert not part_path(dest).exists()


def test_write_atomically_check_failure_leaves_nothing(tmp_path):
    dest = tmp_path / "result.bin"

    def reject(part):
        assert part.read_bytes() == b"payload"  # the check sees the finished .part
        raise DataError("bad")

    with pytest.raises(DataError):
        write_atomically(dest, lambda out: out.write(b"payload"), reject)
    assert not dest.exists() and not part_path(dest).exists()


def test_extract_zip_member_missing_member_and_truncated_zip(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("other", PAYLOAD)
    with pytest.raises(DataError, match="not a member named 'enwik8'"):
        extract_zip_member(archive, "enwik8", tmp_path / "enwik8")
    assert extract_zip_member(archive, "other", tmp_path / "other").read_bytes() == PAYLOAD

    truncated = tmp_path / "cut.zip"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match="not a complete zip"):
        extract_zip_member(truncated, "other", tmp_path / "other2")
    assert not (tmp_path / "other2").exists()
