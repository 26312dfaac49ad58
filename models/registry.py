"""The one model registry: name -> frozen config. `build_model` and `list_models` are the only ways in.

Architectures follow the original code's `resnet/configs/{cifar,imagenet}_configs.py`
(renmengye/revnet-public): pre-activation units, stage widths per stage (bottleneck units output
4x the width), CIFAR stem 3x3/1, ImageNet stem 7x7/2 + max-pool 3x3/2.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Tuple

from revnet.common.errors import UserError, choose
from revnet.common.options import option
from revnet.models.modes import MODES
from revnet.models.normalization import as_nested_tuple, check_input_normalization

DTYPES = ("float32", "float64")
COMPUTE_DTYPES = (None, "float32", "bfloat16", "float16")
# --mixed-precision's spellings of the compute dtypes.
MIXED_PRECISION = {"bf16": "bfloat16", "fp16": "float16"}
# "inception": the original code's ImageNet evaluation (central 87.5% crop, then TF1's bilinear resize).
PREPROCESSING = ("cifar", "imagenet", "inception")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    name: str
    architecture: str                 # "resnet" | "revnet" | "revvit"
    family: str                       # "cifar" | "imagenet": input size, stem, pixel statistics, recipe
    block: str                        # "basic" | "bottleneck" | "transformer" (revvit)
    units_per_stage: Tuple[int, ...]  # revvit: (blocks,)
    channels_per_stage: Tuple[int, ...]  # revvit: (embedding width of both streams together,)
    stem_channels: int
    strides: Tuple[int, ...]
    num_classes: int
    input_size: int
    # The fields with option(...) metadata are also `train` flags: a run may change them (on resume too).
    mode: str = dataclasses.field(default="reversible", metadata=option(
        "Backward pass: reversible recomputation, plain autodiff, or tf.recompute_grad per unit "
        "[default: reversible; on resume, the saved mode].", choices=MODES, click_default=None, show_default=False))
    param_dtype: str = "float32"
    # bfloat16 / float16 for mixed precision; None = param_dtype. Convolutions run in it; batch-norm
    # statistics and a RevNet's residual stream (x1, x2) stay in param_dtype.
    compute_dtype: Optional[str] = dataclasses.field(default=None, metadata=option(
        "Compute in bfloat16 or float16 (with dynamic loss scaling) [default: float32; on resume, the saved "
        "precision].", flag="--mixed-precision", choices=tuple(MIXED_PRECISION), click_default=None,
        show_default=False))
    bn_momentum: float = dataclasses.field(default=0.99, metadata=option(
        "Batch-norm moving-average momentum; lower (e.g. 0.9) suits runs of a few hundred steps "
        "[default: 0.99; on resume, the saved value].", click_default=None, show_default=False))
    seed: int = 0                     # of the initial weights
    # Evaluation/serving preprocessing of decoded images (preprocess.input_pipeline.eval_preprocess):
    # "cifar" (resize only if needed), "imagenet" (shorter side to 256/224 of the input, centre crop) or
    # "inception" (the original code's: central 87.5% crop, bilinear resize without half-pixel centres).
    preprocessing: str = "cifar"
    # How the model turns raw 0..255 pixels into its input (models/normalization.py): "standardize"
    # (per-channel mean/std, the default of configs saved before this field), "subtract_mean" (minus
    # `pixel_mean`, the original code's CIFAR convention) or "symmetric" ((x/255 - 0.5) * 2, its ImageNet one).
    input_normalization: str = "standardize"
    pixel_mean: Optional[Tuple] = None  # 0..255 scale: [3] per channel or [H][W][3] per pixel
    # revvit only (models/revvit.py): attention heads per stream and the patch size; None for the conv nets, and
    # in configs saved before the fields existed.
    num_heads: Optional[int] = None
    patch_size: Optional[int] = None

    def __post_init__(self):
        # JSON gives nested lists; keep the config hashable and its JSON unchanged.
        object.__setattr__(self, "pixel_mean", as_nested_tuple(self.pixel_mean))

    @property
    def stem(self) -> str:
        return self.family

    @property
    def stage_output_channels(self) -> Tuple[int, ...]:
        factor = 4 if self.block == "bottleneck" else 1
        return tuple(factor * c for c in self.channels_per_stage)

    @property
    def depth(self) -> int:
        """Layers with weights, counted as the paper names its models (revnet-110: 9-9-9 basic units)."""
        if self.architecture == "revvit":
            return 2 * sum(self.units_per_stage) + 2   # f and g per block, the patch embedding and the head
        convs_per_unit = 2 if self.block == "basic" else 3
        if self.architecture == "revnet":
            convs_per_unit *= 2  # F and G
        return convs_per_unit * sum(self.units_per_stage) + 2

    def to_json(self) -> Dict:
        return dataclasses.asdict(self)

    def replace(self, **overrides) -> "ModelConfig":
        """A checked copy with the non-None `overrides` applied ("bf16"/"fp16" name the compute dtypes)."""
        fields = {f.name for f in dataclasses.fields(ModelConfig)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise UserError(f"unknown model option(s) {', '.join(unknown)}; expected some of: "
                            f"{', '.join(sorted(fields))}")
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if "compute_dtype" in overrides:
            overrides["compute_dtype"] = MIXED_PRECISION.get(overrides["compute_dtype"], overrides["compute_dtype"])
        return check_config(dataclasses.replace(self, **overrides))


def _cifar(name, architecture, block, units, channels, stem):
    return ModelConfig(name, architecture, "cifar", block, units, channels, stem, (1, 2, 2), 10, 32)


def _imagenet(name, architecture, units, channels, stem):
    return ModelConfig(name, architecture, "imagenet", "bottleneck", units, channels, stem, (1, 2, 2, 2), 1000, 224,
                       preprocessing="imagenet")


def _revvit(name, blocks, width, num_heads, patch_size):
    """A RevViT for 32x32 inputs: `width` is both streams together (each stream has width / 2, num_heads heads);
    stem_channels is the width and strides the patch embedding's stride, for the fields the conv nets also read."""
    return ModelConfig(name, "revvit", "cifar", "transformer", (blocks,), (width,), width, (patch_size,), 10, 32,
                       num_heads=num_heads, patch_size=patch_size)


_CONFIGS: Dict[str, ModelConfig] = {c.name: c for c in [
    _cifar("resnet-32", "resnet", "basic", (5, 5, 5), (16, 32, 64), 16),
    _cifar("resnet-110", "resnet", "basic", (18, 18, 18), (16, 32, 64), 16),
    _cifar("resnet-164", "resnet", "bottleneck", (18, 18, 18), (16, 32, 64), 16),
    _cifar("revnet-38", "revnet", "basic", (3, 3, 3), (32, 64, 112), 32),
    _cifar("revnet-110", "revnet", "basic", (9, 9, 9), (32, 64, 128), 32),
    _cifar("revnet-164", "revnet", "bottleneck", (9, 9, 9), (32, 64, 128), 32),
    _imagenet("resnet-50", "resnet", (3, 4, 6, 3), (64, 128, 256, 512), 64),
    _imagenet("resnet-101", "resnet", (3, 4, 23, 3), (64, 128, 256, 512), 64),
    _imagenet("revnet-56", "revnet", (2, 2, 3, 2), (128, 256, 512, 832), 128),
    _imagenet("revnet-104", "revnet", (2, 2, 11, 2), (128, 256, 512, 832), 128),
    _revvit("revvit-tiny", 12, 192, 3, 4),
]}

# The original code calls the 2-2-3-2 ImageNet RevNet "revnet-54".
ALIASES = {"revnet-54": "revnet-56"}

# Table 1 of the paper (millions of parameters); revnet-56 has no published figure.
PAPER_PARAMS_MILLIONS = {"resnet-32": 0.46, "resnet-110": 1.73, "resnet-164": 1.70, "revnet-38": 0.46,
                         "revnet-110": 1.73, "revnet-164": 1.75, "resnet-50": 25.6, "resnet-101": 44.5,
                         "revnet-104": 45.2}


def list_models() -> List[str]:
    return list(_CONFIGS)


def get_config(name: str, **overrides) -> ModelConfig:
    """The registered config for `name` (or an alias) with `overrides` applied and checked."""
    name = ALIASES.get(name, name)
    config = _CONFIGS.get(name)
    if config is None:
        raise UserError(f"unknown model {name!r}; expected one of: {', '.join(list_models() + list(ALIASES))}")
    return config.replace(**overrides)


def check_config(config: ModelConfig) -> ModelConfig:
    """`config`, or a UserError naming the first field that is out of range."""
    choose("mode", config.mode, MODES)
    choose("parameter dtype", config.param_dtype, DTYPES)
    choose("compute dtype", config.compute_dtype, COMPUTE_DTYPES)
    choose("preprocessing", config.preprocessing, PREPROCESSING)
    check_input_normalization(config)
    units, channels = tuple(config.units_per_stage), tuple(config.channels_per_stage)
    if len(units) != len(channels) or not all(isinstance(u, int) and u >= 1 for u in units):
        raise UserError(f"units_per_stage must be {len(channels)} integers >= 1 (one per stage of {config.name}), "
                        f"got {units}")
    if not isinstance(config.num_classes, int) or config.num_classes < 2:
        raise UserError(f"num_classes must be an integer >= 2, got {config.num_classes!r}")
    if not isinstance(config.bn_momentum, (int, float)) or not 0.0 <= config.bn_momentum < 1.0:
        raise UserError(f"--bn-momentum must be in [0, 1), got {config.bn_momentum}")
    if config.architecture == "revvit":
        _check_revvit(config)
    return config


def _check_revvit(config: ModelConfig) -> None:
    width, heads, patch = config.channels_per_stage[0], config.num_heads, config.patch_size
    if len(config.units_per_stage) != 1:
        raise UserError(f"{config.name} has one stage of blocks; units_per_stage must be one integer, got "
                        f"{tuple(config.units_per_stage)}")
    if not isinstance(patch, int) or patch < 1 or config.input_size % patch:
        raise UserError(f"patch_size must be a positive integer dividing the input size {config.input_size}, "
                        f"got {patch!r}")
    if not isinstance(heads, int) or heads < 1 or width % 2 or (width // 2) % heads:
        raise UserError(f"{config.name}: the width {width} must be even and each stream's half divisible by "
                        f"num_heads ({heads!r})")
    if config.compute_dtype not in (None, config.param_dtype):
        raise UserError(f"{config.name} computes in its parameter dtype; --mixed-precision is not supported for "
                        f"RevViT models")


def model_config_from_json(fields: Dict) -> ModelConfig:
    """A ModelConfig saved as JSON (config.json's "model" part), checked."""
    fields = dict(fields)
    fields.setdefault("preprocessing", fields["family"])  # configs saved before the field existed
    for key in ("units_per_stage", "channels_per_stage", "strides"):
        fields[key] = tuple(fields[key])
    return check_config(ModelConfig(**fields))


def build_model(name_or_config, **overrides):
    """Build the network for a registered name (or a ModelConfig): `model(images, training) -> logits`."""
    config = name_or_config if isinstance(name_or_config, ModelConfig) else get_config(name_or_config, **overrides)
    if isinstance(name_or_config, ModelConfig) and overrides:
        config = config.replace(**overrides)
    if config.architecture == "revnet":
        from revnet.models.revnet import RevNet
        return RevNet(config)
    if config.architecture == "revvit":
        from revnet.models.revvit import RevViT
        return RevViT(config)
    from revnet.models.resnet import ResNet
    return ResNet(config)
