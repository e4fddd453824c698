from zoo.backbones.model import ZooModel
from zoo.backbones.registry import BackboneSpec, PretrainedCfg, create_model, get_spec, list_specs

__all__ = ["ZooModel", "BackboneSpec", "PretrainedCfg", "create_model", "get_spec", "list_specs"]
