import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

# Tests never reach the network: torchvision's cache points at an empty folder unless a test sets it.
os.environ.setdefault("TORCH_HOME", str(Path(__file__).resolve().parent / ".torch-home-empty"))
os.environ.pop("ZOO_WEIGHTS_DIR", None)


@pytest.fixture(scope="session", autouse=True)
def feature_cache_dir(tmp_path_factory) -> Path:
    """Shared by every test of a pytest worker (make test runs two), like a user's ~/.cache: runs on the same
    images reuse features and graphs.

    Never the real ~/.cache: the suite starts empty on every machine, as in CI, and leaves the user's alone."""
    path = tmp_path_factory.mktemp("zoo-cache")
    _share_graphs_between_workers(path, tmp_path_factory)
    with pytest.MonkeyPatch.context() as env:  # session-scoped: the monkeypatch fixture is per test
        env.setenv("ZOO_CACHE_DIR", str(path))
        yield path / "features"


def _share_graphs_between_workers(path: Path, tmp_path_factory) -> None:
    """Under pytest-xdist, the traced graphs (ONNX Runtime feature graphs, export graphs) live in one folder
    shared by the workers, as one user's runs share ~/.cache/zoo: a backbone is traced once per suite, not
    once per worker (a lite0 trace is 15-25 s here). Entries are written atomically, so a worker never
    reads another's half-written graph; the features stay per worker."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    shared = tmp_path_factory.getbasetemp().parent / "zoo-cache-shared"  # the parent of every worker's basetemp
    for name in ("graphs", "export-graphs"):
        (shared / name).mkdir(parents=True, exist_ok=True)
        (path / name).symlink_to(shared / name, target_is_directory=True)


@pytest.fixture(scope="session", autouse=True)
def serve_home(tmp_path_factory) -> Path:
    """Servers' state folders (ZOO_SERVE_HOME) in the test session's own folder, never the user's ~/.zoo/serve."""
    path = tmp_path_factory.mktemp("serve-home")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ZOO_SERVE_HOME", str(path))
        yield path


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="session")
def textures_dir(tmp_path_factory) -> Path:
    from zoo.data.samples import write_sample

    out = tmp_path_factory.mktemp("data") / "textures"
    write_sample("textures", out, seed=0)
    return out


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    from zoo.data.samples import write_sample

    out = tmp_path_factory.mktemp("data") / "digits"
    write_sample("digits", out, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_textures(tmp_path_factory) -> Path:
    """15 train and 6 val crops of the brick, grass and gravel textures, of varied sizes."""
    from zoo.data.samples import write_sample

    out = tmp_path_factory.mktemp("data") / "tiny"
    write_sample("textures", out, seed=0, limit=20)
    return out


@pytest.fixture
def tiny_copy(tiny_textures, tmp_path) -> Path:
    """A private copy a test may damage."""
    return Path(shutil.copytree(tiny_textures, tmp_path / "data"))
