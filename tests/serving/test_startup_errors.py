"""Start-up errors a user can act on: an export folder that cannot be written (read-only, immutable, not
ours) and a gRPC port already taken are one-line user errors naming the folder or the port."""
import errno
import os
import socket

import pytest

from revnet.common.errors import UserError


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.EPERM])
def test_an_unwritable_export_folder_is_a_user_error_naming_it(tmp_path, monkeypatch, code):
    from revnet.serving import exporter

    def refuse(path, *args, **kwargs):
        raise OSError(code, os.strerror(code), path)

    monkeypatch.setattr(exporter.os, "mkdir", refuse)
    with pytest.raises(UserError, match=f"cannot write into the export folder '{tmp_path}'.*--output"):
        exporter.reserve_version(str(tmp_path), None, overwrite=False)
    monkeypatch.setattr(exporter.os, "makedirs", refuse)
    with pytest.raises(UserError, match="cannot create the export folder .*models.*--output"):
        exporter.reserve_version(str(tmp_path / "models"), None, overwrite=False)


def test_other_failures_are_not_disguised(tmp_path, monkeypatch):
    from revnet.serving import exporter

    def fail(path, *args, **kwargs):
        raise OSError(errno.EIO, "I/O error", path)

    monkeypatch.setattr(exporter.os, "mkdir", fail)
    with pytest.raises(OSError, match="I/O error"):
        exporter.reserve_version(str(tmp_path), None, overwrite=False)


def test_a_port_in_use_is_named_before_grpc_tries_it():
    from revnet.serving.server import _refuse_a_port_in_use

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(UserError, match=f"port {port} on 127.0.0.1 is in use"):
            _refuse_a_port_in_use(f"127.0.0.1:{port}")
    _refuse_a_port_in_use(f"127.0.0.1:{port}")   # free again
    _refuse_a_port_in_use("127.0.0.1:0")
