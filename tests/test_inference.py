"""zoo.inference, the helpers the edge runtime and the handlers share (a copy travels in every archive)."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np

from zoo.inference import CPU, choose_providers, same_shape_groups, top_k

REPO = Path(__file__).resolve().parents[1]


def test_it_imports_nothing_but_numpy_and_onnxruntime():
    """It runs inside a .mar on servers without zoo, so it must never import from zoo."""
    tree = ast.parse((REPO / "zoo" / "inference.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    allowed = {"__future__", "collections", "contextlib", "functools", "io", "json", "logging", "pathlib", "sys",
               "typing", "numpy", "onnxruntime"}
    assert imported <= allowed, imported


def test_same_shape_groups_are_stable_and_capped():
    shapes = [(3, 4, 5), (3, 6, 5), (3, 4, 5), (3, 4, 5), (3, 6, 5)]
    assert same_shape_groups(shapes, 2) == [[0, 2], [3], [1, 4]]
    arrays = [np.zeros(s, np.float32) for s in shapes]
    assert same_shape_groups(arrays, 8) == [[0, 2, 3], [1, 4]]
    assert same_shape_groups(arrays, 0) == [[0], [2], [3], [1], [4]]  # at least one per group
    assert same_shape_groups([], 4) == []


def test_top_k_is_stable_and_capped_by_the_labels():
    probs = np.array([0.2, 0.4, 0.2, 0.2], np.float32)
    assert list(top_k(probs, ["a", "b", "c", "d"], 3)) == ["b", "a", "c"]  # ties keep label order
    assert list(top_k(probs, ["a", "b", "c", "d"], 50)) == ["b", "a", "c", "d"]
    assert list(top_k(probs, ["a", "b", "c", "d"], 0)) == ["b"]
    assert all(isinstance(v, float) for v in top_k(probs, ["a", "b", "c", "d"], 4).values())


def test_requested_providers_always_end_with_the_cpu():
    assert choose_providers([CPU]) == [CPU]
    assert choose_providers(["CUDAExecutionProvider"]) == ["CUDAExecutionProvider", CPU]
