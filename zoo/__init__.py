"""zoo: from a folder of labelled images to a served, edge-ready image classifier.

One top-level package. The repository keeps export/, handlers/ and cli.py beside zoo/; the wheel
maps them into it as zoo.export, zoo.handlers and zoo.cli (setup.py). In a source checkout they are
found under those same names by adding the checkout to this package's search path, only when the
checkout's export/ is there and zoo/export is not (so never in an installed wheel).
"""
from pathlib import Path as _Path

__version__ = "0.1.0"  # pyproject.toml reads it from here (one place to change)

_here = _Path(__file__).resolve().parent
if (_here.parent / "export" / "__init__.py").is_file() and not (_here / "export").exists():
    __path__.append(str(_here.parent))

# Heavy entry points load on first use: `import zoo` (and zoo.preprocess, which the edge runtime
# uses) must not import torch.
_LAZY = {"finetune": "zoo.training.finetune"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")
