"""Backbones ranked by held-out probe score beside measured ONNX Runtime latency; --model auto picks within a budget."""
import pytest

from zoo.advisor.backbones import BackboneScore, _mark_pareto, parse_models, pick_backbone
from zoo.cli import app
from zoo.errors import ZooError


def _score(name: str, score: float, ms: float) -> BackboneScore:
    return BackboneScore(name, score, 0.01, "head", 224, {1: ms, 8: 4 * ms}, "CPUExecutionProvider")


def test_pareto_front_and_the_pick_within_a_latency_budget():
    scores = _mark_pareto([_score("a", 0.90, 10.0), _score("b", 0.95, 20.0), _score("c", 0.93, 25.0),
                           _score("d", 0.90, 12.0)])
    assert [s.model for s in scores if s.pareto] == ["a", "b"]  # c is slower and worse than b, d than a
    assert pick_backbone(scores, None).model == "b"
    assert pick_backbone(scores, 15.0).model == "a"
    with pytest.raises(ZooError, match="raise --max-latency-ms"):
        pick_backbone(scores, 5.0)


def test_model_lists_are_checked_against_the_registry():
    assert "efficientnet_lite0" in parse_models("available")
    assert parse_models("efficientnet_lite0, efficientnet_lite1") == ["efficientnet_lite0", "efficientnet_lite1"]
    with pytest.raises(ZooError, match="Unknown model"):
        parse_models("efficientnet_lite9")


def test_advise_ranks_backbones_with_measured_latency(runner, tiny_textures):
    import json

    result = runner.invoke(app, ["advise", str(tiny_textures), "--models", "efficientnet_lite0", "--json"])
    assert result.exit_code == 0, result.output
    (ranked,) = json.loads(result.output)
    assert ranked["model"] == "efficientnet_lite0" and ranked["pareto"] and 0 < ranked["score"] <= 1
    assert ranked["latency_ms"]["1"] > 0 and ranked["latency_ms"]["8"] > ranked["latency_ms"]["1"]
