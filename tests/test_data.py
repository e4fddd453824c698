"""Sample datasets from packaged images, and inspection that survives corrupt files."""
import json
import shutil

from PIL import Image

from cli import app
from zoo.data.folder import load_image_folder


def test_textures_sample_is_a_real_imagefolder(textures_dir):
    data = load_image_folder(textures_dir)
    assert data.presplit and len(data.classes) >= 3
    assert len(data.train) + len(data.val) >= 300
    sizes = {Image.open(s.path).size for s in data.train[:50]}
    assert len(sizes) > 10, "varied sizes"
    assert all(Image.open(s.path).mode == "RGB" for s in data.val[:10])
    counts = data.class_counts("val")
    assert min(counts.values()) == max(counts.values())  # stratified


def test_digits_sample_has_10_classes_of_rgb_png(digits_dir):
    data = load_image_folder(digits_dir)
    assert data.classes == [str(d) for d in range(10)]
    assert len(data.train) + len(data.val) == 5000
    img = Image.open(data.train[0].path)
    assert img.mode == "RGB" and img.size == (28, 28) and data.train[0].path.suffix == ".png"


def test_sample_is_seeded(tmp_path, runner):
    for d in ("a", "b"):
        assert runner.invoke(app, ["data", "sample", "textures", str(tmp_path / d), "--seed", "3"]).exit_code == 0
    a, b = sorted((tmp_path / "a").rglob("*.png")), sorted((tmp_path / "b").rglob("*.png"))
    assert [p.read_bytes() for p in a[:20]] == [p.read_bytes() for p in b[:20]]


def test_sample_refuses_to_overwrite(tmp_path, runner):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "precious.txt").write_text("keep me")
    result = runner.invoke(app, ["data", "sample", "digits", str(target)])
    assert result.exit_code != 0 and "--force" in result.output
    assert (target / "precious.txt").read_text() == "keep me"


def test_inspect_reports_corrupt_file_without_failing(textures_dir, tmp_path, runner):
    data = tmp_path / "tex"
    shutil.copytree(textures_dir, data)
    (data / "train" / "brick" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (data / "train" / "grass" / "notes.jpg").write_text("not an image")
    result = runner.invoke(app, ["data", "inspect", str(data), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    bad = {e["path"].rsplit("/", 1)[1] for e in report["unreadable"]}
    assert bad == {"broken.png", "notes.jpg"}
    assert report["splits"]["train"]["brick"] == 111
    assert report["readable"] == report["images"] - 2
    assert report["width_range"][0] >= 48 and report["imbalance_ratio"] > 1
