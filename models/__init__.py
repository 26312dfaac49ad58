"""The ResNet / RevNet zoo and the reversible stack."""
from revnet.models.registry import ModelConfig, build_model, get_config, list_models

__all__ = ["ModelConfig", "build_model", "get_config", "list_models"]
