"""The .mar archives in a model store, and the ones a server is asked to serve."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

from zoo.errors import UsageError, ZooError


def list_archives(model_store: Path) -> dict[str, str]:
    """name -> version of every .mar in the store (the version comes from its manifest)."""
    found = {}
    for mar in sorted(Path(model_store).glob("*.mar")):
        try:
            with zipfile.ZipFile(mar) as z:
                manifest = json.loads(z.read("MAR-INF/MANIFEST.json"))
        except (zipfile.BadZipFile, KeyError, json.JSONDecodeError):
            raise ZooError(f"{mar} is not a TorchServe archive: delete it or re-run `zoo export`.") from None
        found[mar.stem] = str(manifest.get("model", {}).get("modelVersion") or "1.0")
    return found


def choose_models(model_store: Path, names: tuple[str, ...]) -> dict[str, str]:
    """name -> version of the named archives (all of them when names is empty); a missing one is refused."""
    store = Path(model_store)
    if not store.is_dir():
        raise UsageError(f"{store} is not a folder: give the --model-store that `zoo export` wrote archives into.")
    archives = list_archives(store)
    if not archives:
        raise ZooError(f"{store} holds no .mar archives: run `zoo export RUN_DIR` first.")
    unknown = [n for n in names if n not in archives]
    if unknown:
        raise UsageError(f"{', '.join(unknown)} not in {store} (it holds {', '.join(archives)}): pick from those.")
    return {n: archives[n] for n in (names or archives)}
