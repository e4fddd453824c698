"""zoo: from a folder of labelled images to a served, edge-ready image classifier."""

__version__ = "0.1.0"  # pyproject.toml reads it from here (one place to change)

# Heavy entry points load on first use: `import zoo` (and zoo.preprocess, which the edge runtime
# uses) must not import torch.
_LAZY = {"finetune": "zoo.training.finetune"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")
