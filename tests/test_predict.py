"""Edge inference: `zoo predict` without PyTorch, and the README's snippet in a bare environment."""
import json
import re
import subprocess
import sys
import venv
from importlib import metadata
from pathlib import Path

import pytest

from zoo.cli import app

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The session's shared lite0 export (serve_helpers: one export for the serving, packaging and edge tests)."""
    from serve_helpers import exported as shared

    artifacts = shared(tmp_path_factory)
    return artifacts.export_dir, artifacts.data_dir


def test_zoo_predict_never_imports_torch(exported):
    export_dir, data = exported
    image = sorted((data / "val").rglob("*.png"))[0]
    code = ("import sys\nimport zoo.cli as cli\n"
            f"sys.argv = ['zoo', 'predict', {str(image)!r}, '--model', {str(export_dir)!r}, '--json']\n"
            "try:\n    cli.main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision'))\n"
            "print('HEAVY', heavy, file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stderr
    answer = json.loads(proc.stdout)
    assert answer[0]["error"] is None and len(answer[0]["top_k"]) == 3


def test_predict_reports_unreadable_files_and_goes_on(exported, runner, tmp_path):
    export_dir, data = exported
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    good = sorted((data / "val").rglob("*.png"))[:2]
    result = runner.invoke(app, ["predict", str(bad), *map(str, good), "--model", str(export_dir), "--json",
                                 "--top-k", "10"])
    assert result.exit_code == 1, result.output  # not every input was classified
    rows = json.loads(result.output)
    assert rows[0]["error"] and "not an image" in rows[0]["error"]
    assert all(r["error"] is None and len(r["top_k"]) == 3 for r in rows[1:])  # k capped at the 3 classes


def test_predict_needs_a_model_or_server(runner, tmp_path):
    result = runner.invoke(app, ["predict", str(tmp_path)])
    assert result.exit_code != 0 and "--model" in result.output


def _link_distribution(name: str, site: Path, seen: set[str]) -> None:
    """Make a distribution (and its required dependencies) importable in `site` by symlinks."""
    key = name.lower().replace("_", "-")
    if key in seen:
        return
    seen.add(key)
    dist = metadata.distribution(name)
    root = Path(dist.locate_file(""))
    for top in {Path(f).parts[0] for f in dist.files or []}:
        if top.startswith("..") or top == "__pycache__" or (site / top).exists():
            continue
        if (root / top).exists():
            (site / top).symlink_to(root / top)
    for req in dist.requires or []:
        if "extra ==" in req:
            continue
        _link_distribution(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0], site, seen)


def _readme_edge_snippet() -> str:
    text = (REPO / "README.md").read_text()
    m = re.search(r"<!-- edge-snippet -->\s*```python\n(.*?)```", text, re.S)
    assert m, "README.md must hold the edge snippet after <!-- edge-snippet -->"
    return m.group(1)


@pytest.mark.slow
def test_readme_edge_snippet_runs_with_only_onnxruntime_numpy_pillow(exported, tmp_path):
    export_dir, data = exported
    env_dir = tmp_path / "edge-env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    site = next((env_dir / "lib").glob("python3*/site-packages"))
    gpu_build = any(d.metadata["Name"] == "onnxruntime-gpu" for d in metadata.distributions())
    ort_dist = "onnxruntime-gpu" if gpu_build else "onnxruntime"
    seen: set[str] = set()
    for dist in (ort_dist, "numpy", "pillow"):
        _link_distribution(dist, site, seen)
    python = env_dir / "bin" / "python"
    probe = subprocess.run([str(python), "-I", "-c", "import importlib.util as u; "
                            "print([m for m in ('torch', 'zoo', 'typer', 'torchvision') if u.find_spec(m)])"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert probe.stdout.strip() == "[]", probe.stdout + probe.stderr  # nothing but the three (and their deps)
    script = tmp_path / "edge.py"
    script.write_text(_readme_edge_snippet())
    images = sorted((data / "val").rglob("*.png"))[:4]
    proc = subprocess.run([str(python), "-I", str(script), str(export_dir), *map(str, images)], capture_output=True,
                          text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == len(images)

    from zoo.edge import EdgeModel

    expected = EdgeModel(export_dir).predict(images, top_k=1)
    for line, want in zip(lines, expected, strict=True):
        path, label, prob = line.rsplit(" ", 2)
        assert label == want.label and abs(float(prob) - want.top_k[want.label]) < 1e-4
