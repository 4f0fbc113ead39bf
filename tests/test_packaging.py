"""The top-level data/ reaches users: from a checkout, and from a built wheel (issue 12)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from headscope import datafiles

ROOT = Path(__file__).resolve().parent.parent
DATA = sorted(p.name for p in (ROOT / "data").iterdir() if p.suffix == ".json")


def test_every_data_file_says_where_it_came_from():
    assert len(DATA) == 8
    for name in DATA:
        source = json.loads((ROOT / "data" / name).read_text())["_source"]
        assert "written for headscope" in source, name
        assert name in (ROOT / "data" / "README.md").read_text()


def test_checkout_reads_the_top_level_data_directory():
    assert not list((ROOT / "headscope" / "data").glob("*.json"))  # no stale copy inside the package
    for name in DATA:
        assert datafiles.data_path(name) == ROOT / "data" / name


def test_row_tables_load_with_hugging_face_datasets(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path))
    for name, field, n in (("mcqa.json", "questions", 48), ("harmful_requests.json", "requests", 64),
                           ("needles.json", "needles", None)):
        ds = datasets.load_dataset("json", data_files=str(ROOT / "data" / name), field=field, split="train")
        want = json.loads((ROOT / "data" / name).read_text())[field]
        assert len(ds) == len(want) and (n is None or len(ds) == n)
        assert ds[0] == want[0]


def _isolation() -> list[str]:
    """Build with this environment's setuptools when it can make wheels by itself (>= 71, no
    network needed); otherwise let pip fetch the build requirements (a fresh venv's setuptools 65
    cannot build a wheel)."""
    try:
        import setuptools
    except ImportError:
        return []
    return ["--no-build-isolation"] if int(setuptools.__version__.split(".")[0]) >= 71 else []


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """A wheel built from a copy of the checkout (the checkout itself gets no build/ litter)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for item in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / item, src / item)
    for item in ("headscope", "data"):
        shutil.copytree(ROOT / item, src / item, ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *_isolation(), "-q", str(src),
                           "-w", str(tmp / "dist")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = (tmp / "dist").glob("headscope-*.whl")
    return path


def test_wheel_holds_the_data_files_and_every_module(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in DATA:
        assert f"headscope/data/{name}" in names, name
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "headscope").rglob("*.py") if "__pycache__" not in p.parts}
    assert modules <= names, sorted(modules - names)  # a package missing from pyproject's list


def test_installed_wheel_finds_its_data(wheel, tmp_path):
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    code = ("import json, headscope.datafiles as d\n"
            f"print(json.dumps({{n: str(d.data_path(n)) for n in {DATA!r}}}))\n"
            f"print(len(d.load_json('mcqa.json')['questions']))")
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    paths, n = out.stdout.splitlines()
    for name, where in json.loads(paths).items():
        assert Path(where) == site / "headscope" / "data" / name
    assert int(n) == 48
