"""conf/ ships inside the package: a built (non-editable) wheel holds every YAML file as
reformer_lab.conf, and the entry point composes its configs from there."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import CONF_DIR, REPO


def test_the_package_links_to_the_top_level_conf_folder() -> None:
    link = REPO / "src" / "reformer_lab" / "conf"
    assert link.is_symlink() and link.resolve() == CONF_DIR.resolve()
    assert (CONF_DIR / "__init__.py").is_file()  # importable as reformer_lab.conf


@pytest.mark.slow
def test_a_built_wheel_carries_the_configs_and_runs_without_the_checkout(tmp_path: Path) -> None:
    pytest.importorskip("setuptools", minversion="68")
    source = tmp_path / "checkout"  # a copy, so the build leaves no build/ in the repository
    shutil.copytree(
        REPO / "src",
        source / "src",
        symlinks=True,
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
    )
    shutil.copytree(CONF_DIR, source / "conf", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("reformer_lab-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(
            archive.read(n).decode() for n in names if n.endswith("entry_points.txt")
        )
        archive.extractall(tmp_path / "site")
    shipped = {
        n.removeprefix("reformer_lab/conf/")
        for n in names
        if n.startswith("reformer_lab/conf/") and n.endswith(".yaml")
    }
    expected = {
        str(p.relative_to(CONF_DIR))
        for p in CONF_DIR.rglob("*.yaml")
        if p.parts[len(CONF_DIR.parts)] != "local"
    }
    assert expected <= shipped
    assert "reformer-train = reformer_lab.cli.train:main" in entry_points
    assert "reformer-eval = reformer_lab.cli.evaluate:main" in entry_points

    # The unpacked wheel first on the path, run from an empty folder: no checkout in sight.
    env = {"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"}
    where = subprocess.run(
        [sys.executable, "-c", "import reformer_lab; print(reformer_lab.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.stdout.strip().startswith(str(tmp_path / "site"))
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "reformer_lab.cli.train",
            "--cfg",
            "job",
            "experiment=enwik8_3layer",
        ],  # no conf/local in a wheel
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "_target_: reformer_lab.data.Enwik8DataModule" in shown.stdout
