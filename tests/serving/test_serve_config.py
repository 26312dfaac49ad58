"""ServeConfig is the one definition of every serve option: the CLI's flags, their defaults and their checks."""
import dataclasses

import pytest
from click.testing import CliRunner

from revnet.common.errors import UserError
from revnet.common.options import flag_of, option_fields
from revnet.serving.serve_config import ExportConfig, ServeConfig


@pytest.mark.parametrize("command, config", [("serve", ServeConfig), ("export", ExportConfig)])
def test_every_field_is_a_flag_with_the_fields_default(command, config):
    from revnet import cli

    params = {param.name: param for param in cli.cli.commands[command].params}
    for field in option_fields(config):
        assert field.name in params, field.name
        if field.default is not dataclasses.MISSING:
            assert params[field.name].default == field.default, field.name
        assert flag_of(config, field.name) in params[field.name].opts
    assert "--rest-max-connections-per-client" in CliRunner().invoke(cli.cli, ["serve", "--help"]).output


@pytest.mark.parametrize("options, message", [
    (dict(max_batch_size=0), "--max-batch-size 0"),
    (dict(rest_port=-2), "--rest-port -2"),
    (dict(rest_max_connections_per_client=0), "--rest-max-connections-per-client 0"),
    (dict(max_request_rows=4), "--max-request-rows (4) must be at least --max-batch-size"),
    (dict(tls_cert="cert.pem"), "TLS needs both"),
    (dict(backend="torch"), "--backend must be one of onnx, tf"),
])
def test_out_of_range_options_are_one_clear_error_naming_the_flag(options, message):
    with pytest.raises(UserError, match=None) as raised:
        ServeConfig(model_dir="models/revnet", **options)
    assert message in str(raised.value)


def test_rest_off_is_minus_one_or_none():
    assert not ServeConfig(model_dir="m", rest_port=None).rest_enabled
    assert ServeConfig(model_dir="m").rest_enabled and flag_of(ServeConfig, "rest_port") == "--rest-port"
