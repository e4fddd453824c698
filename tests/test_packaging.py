"""The wheel installs one top-level package, `zoo`; its base install (no extras) is the edge runtime,
and `zoo predict` runs there without torch and without a network.

The wheel is built from a copy of the sources with this environment's setuptools (no build
isolation, no index). A test may not download, so the fresh environment gets zoo's base
requirements, and theirs, from this environment's installed distributions (linked, as they are
installed); `pip check` then proves the base install is complete, whatever pip would have fetched.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import venv
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from PIL import Image

from zoo import __version__

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "zoo", "export", "handlers", "cli.py")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    for name in SOURCES:  # a copy: the build's own files never land in the checkout
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, root / "src" / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            (root / "src").mkdir(exist_ok=True)
            shutil.copy(path, root / "src" / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-w", str(root / "dist"), str(root / "src")], capture_output=True, text=True)
    assert build.returncode == 0, build.stdout + build.stderr
    return next((root / "dist").glob("zoo-*.whl"))


def _wheel_metadata(wheel: Path):
    with zipfile.ZipFile(wheel) as z:
        return Parser().parsestr(z.read(f"zoo-{__version__}.dist-info/METADATA").decode())


def test_the_wheel_holds_one_top_level_package_with_export_handlers_and_cli_inside(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        top_level = z.read(f"zoo-{__version__}.dist-info/top_level.txt").decode().split()
    assert {n.split("/")[0] for n in names} == {"zoo", f"zoo-{__version__}.dist-info"}
    assert top_level == ["zoo"]
    sources = {f"zoo/{p.relative_to(REPO / 'zoo')}" for p in (REPO / "zoo").rglob("*.py")}
    sources |= {f"zoo/export/{p.name}" for p in (REPO / "export").glob("*.py")}
    sources |= {f"zoo/handlers/{p.name}" for p in (REPO / "handlers").glob("*.py")} | {"zoo/cli.py"}
    assert sources <= names, sorted(sources - names)
    meta = _wheel_metadata(wheel)
    base = [Requirement(r) for r in meta.get_all("Requires-Dist") if "extra ==" not in r]
    assert {r.name for r in base} >= {"numpy", "pillow", "typer", "rich"} and not {"torch", "torchserve"} & {
        r.name for r in base}
    assert {"train", "serve", "all"} <= set(meta.get_all("Provides-Extra"))


def _link(name: str, site: Path, seen: set[str]) -> None:
    """A distribution of this environment, and the ones it requires here, made importable in `site`."""
    dist = metadata.distribution(name)
    key = dist.metadata["Name"].lower().replace("_", "-")
    if key in seen:
        return
    seen.add(key)
    root = Path(dist.locate_file(""))
    for top in {Path(f).parts[0] for f in dist.files or []}:
        if not top.startswith("..") and top != "__pycache__" and not (site / top).exists() and (root / top).exists():
            (site / top).symlink_to(root / top)
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            _link(req.name, site, seen)


def test_the_edge_install_alone_runs_zoo_predict_offline(wheel, tmp_path, tmp_path_factory):
    from serve_helpers import exported

    export_dir = exported(tmp_path_factory).export_dir  # a real lite0 export, made in this environment
    env_dir = tmp_path / "edge-env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    installed = subprocess.run([*pip, "install", "--no-index", "--no-deps", str(wheel)], capture_output=True, text=True)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    site = next((env_dir / "lib").glob("python3*/site-packages"))
    seen: set[str] = set()
    for req in (Requirement(r) for r in _wheel_metadata(wheel).get_all("Requires-Dist")):
        if req.marker is None or req.marker.evaluate({"extra": ""}):  # the base install: no extra
            _link(req.name, site, seen)
    check = subprocess.run([*pip, "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr  # every base requirement is satisfied
    probe = subprocess.run([str(python), "-I", "-c", "import importlib.util as u; print([m for m in ('torch', "
                            "'torchvision', 'sklearn', 'matplotlib', 'onnx', 'ts') if u.find_spec(m)])"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert probe.stdout.strip() == "[]", probe.stdout + probe.stderr
    images = []
    for i, size in enumerate([(64, 48), (200, 120)]):
        images.append(tmp_path / f"image{i}.png")
        Image.new("RGB", size, (30 * i, 120, 200)).save(images[-1])
    zoo = env_dir / "bin" / "zoo"
    version = subprocess.run([str(zoo), "--version"], capture_output=True, text=True, cwd=tmp_path)
    assert version.stdout.strip() == f"zoo {__version__}"
    result = subprocess.run([str(zoo), "predict", *map(str, images), "--model", str(export_dir), "--json"],
                            capture_output=True, text=True, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["error"] for r in rows] == [None, None] and all(len(r["top_k"]) == 3 for r in rows)
