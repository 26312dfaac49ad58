import pytest

from revnet.common.errors import UserError
from revnet.models import build_model, get_config, list_models
from revnet.models.registry import PAPER_PARAMS_MILLIONS

REQUIRED = ["resnet-32", "resnet-110", "resnet-164", "revnet-38", "revnet-110", "revnet-164",
            "resnet-50", "resnet-101", "revnet-56", "revnet-104"]


def test_every_required_model_is_registered():
    assert set(REQUIRED) <= set(list_models())


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS_MILLIONS))
def test_parameter_count_matches_paper_within_3_percent(name):
    params = build_model(name).count_params()
    reference = PAPER_PARAMS_MILLIONS[name] * 1e6
    assert abs(params - reference) / reference <= 0.03, f"{name}: {params} vs paper {reference:.0f}"


@pytest.mark.parametrize("name", ["revnet-38", "resnet-164"])
def test_shape_only_count_equals_the_real_trainable_variables(name):
    from revnet.models.layers import shapes_only

    model = build_model(name)
    with shapes_only():
        counted = build_model(name).count_params()
    assert counted == sum(v.shape.num_elements() for v in model.trainable_variables) == model.count_params()


def test_revnet_54_is_an_alias_of_revnet_56():
    assert get_config("revnet-54") == get_config("revnet-56")
    assert get_config("revnet-56").units_per_stage == (2, 2, 3, 2)


def test_imagenet_revnet_stem_has_128_channels_split_in_halves():
    config = get_config("revnet-104")
    assert config.stem_channels == 128 and config.stem == "imagenet"
    model = build_model("revnet-56")
    assert model.stem.params["conv/kernel"].shape == (7, 7, 3, 128)


@pytest.mark.parametrize("bad, message", [
    ({"name": "revnet-39"}, "unknown model 'revnet-39'"),
    ({"name": "revnet-38", "mode": "magic"}, "unknown mode 'magic'"),
    ({"name": "revnet-38", "num_classes": 1}, "num_classes"),
    ({"name": "revnet-38", "depth": 3}, "unknown model option"),
])
def test_bad_model_requests_raise_user_errors_naming_the_choices(bad, message):
    with pytest.raises(UserError, match=message):
        get_config(bad.pop("name"), **bad)


def test_bottleneck_blocks_output_four_times_the_stage_width():
    assert get_config("revnet-164").stage_output_channels == (128, 256, 512)
    assert get_config("resnet-32").stage_output_channels == (16, 32, 64)
