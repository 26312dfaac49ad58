"""`ServeConfig` and `ExportConfig`: every `serve` and `export` option, each in one frozen dataclass.

This is the only place serving and export defaults live. `cli.py serve` and `cli.py export` build one
flag per field (common/options.py: type from the annotation, default from the field, help and bounds from
the metadata), and `start_server(**options)` and `export(**options)` take the same names. The limits
bound what one client can make the server do: rows per request, pixels per image, decode and connection
slots, the time a REST request may take.

Importing this module imports nothing heavy (the CLI builds its flags from it).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from revnet.common.errors import UserError
from revnet.common.options import flag_of, option
from revnet.preprocess.image_limits import DEFAULT_MAX_IMAGE_PIXELS
from revnet.serving import layout
from revnet.train.train_config import DEFAULT_WORKDIR

BACKENDS = ("onnx", "tf")
EXPORT_FORMATS = ("savedmodel", "onnx", "all")
QUANTIZATIONS = ("int8",)
OPSETS = (7, 18)   # what tf2onnx 1.17 converts to
DEFAULT_PORT = 8500
DEFAULT_REST_PORT = 8501


def _field(default, help_text: str, **kwargs):
    return dataclasses.field(default=default, metadata=option(help_text, **kwargs))


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """What to serve, where, and the bounds on every request."""

    model_dir: Optional[str] = _field(None, "OUTPUT/NAME folder from `export`: serve this one model, its latest "
                                            "version that loads (or give --model-config-file).", path="dir")
    model_config_file: Optional[str] = _field(
        None, "TF Serving ModelServerConfig (text format): several models, each with its base_path, "
              "model_platform (onnx or tensorflow; empty = --backend), model_version_policy (latest N, all, "
              "specific) and version_labels; see docs/serving.md.", path="file")
    model_config_file_poll_wait_seconds: float = _field(
        0.0, "Re-read --model-config-file this often and apply it when it changed; a bad file is refused and "
             "the old config keeps serving (0 = never; ModelService.HandleReloadConfigRequest reloads any time).",
        min=0)
    backend: str = _field("onnx", "ONNX Runtime or TF SavedModel (for --model-dir, and for models whose "
                                  "model_platform is empty).", choices=BACKENDS)
    host: str = _field("127.0.0.1", "Bind address; use 0.0.0.0 to expose the server.")
    port: int = _field(DEFAULT_PORT, "gRPC port (0 = any free port).", min=0)
    rest_port: int = _field(DEFAULT_REST_PORT, "REST and /metrics port (0 = any free port, -1 = off).", min=-1)
    max_batch_size: int = _field(32, "Rows per backend run (dynamic batch); a larger request runs as chunks of "
                                     "this size.", min=1)
    max_request_rows: int = _field(1024, "Most rows (images) one request may carry; more is INVALID_ARGUMENT "
                                         "(REST 400).", min=1)
    max_image_pixels: int = _field(DEFAULT_MAX_IMAGE_PIXELS, "Refuse a JPEG/PNG whose header declares more pixels "
                                                             "(width*height), before decoding it.", min=1)
    decode_workers: int = _field(2, "Threads decoding JPEG/PNG requests.", min=1)
    decode_queue: int = _field(64, "Image requests that may wait for a decode thread; one more is "
                                   "RESOURCE_EXHAUSTED (REST 503).", min=0)
    rest_timeout_seconds: float = _field(10.0, "Time a REST client has to send a request's headers and body (then "
                                               "408 and the connection closes); reading what it still sends after "
                                               "an error answer ends at the same deadline.", min=0.1)
    rest_max_connections: int = _field(64, "Open REST connections; one more is answered 503 and closed.", min=1)
    rest_max_connections_per_client: int = _field(
        32, "Open REST connections from one client address; one more is answered 429 and closed, so a few slow "
            "clients cannot hold every slot (behind a proxy, where every client has its address, raise it to "
            "--rest-max-connections).", min=1)
    batch_timeout_ms: float = _field(2.0, "Wait this long for more requests to batch; 0 turns dynamic batching "
                                          "off.", min=0)
    workers: int = _field(16, "gRPC worker threads.", min=1)
    tls_cert: Optional[str] = _field(None, "PEM certificate (with --tls-key) for TLS.", path="file")
    tls_key: Optional[str] = _field(None, "PEM private key for TLS.", path="file")
    max_message_mb: int = _field(64, "Largest gRPC message in MiB.", min=1)
    poll_seconds: float = _field(2.0, "How often to look for new versions.", min=0.1)
    onnx_file: str = _field(layout.ONNX_FILE, "ONNX file in each version folder (e.g. model.int8.onnx).")
    intra_op_threads: int = _field(0, "ONNX Runtime intra-op threads; 0 = every core, less one kept for the gRPC "
                                      "threads where there are more than 2.", min=0)

    def __post_init__(self):
        if self.rest_port is None:  # in-process callers turn REST off with None, the CLI with -1
            object.__setattr__(self, "rest_port", -1)
        if bool(self.model_dir) == bool(self.model_config_file):
            raise UserError("give either --model-dir (one model) or --model-config-file (several), not "
                            + ("both" if self.model_dir else "neither"))
        if self.model_config_file_poll_wait_seconds and not self.model_config_file:
            raise UserError("--model-config-file-poll-wait-seconds needs --model-config-file")
        if self.backend not in BACKENDS:
            raise UserError(f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        positive = ("max_batch_size", "max_request_rows", "max_image_pixels", "decode_workers", "rest_timeout_seconds",
                    "rest_max_connections", "rest_max_connections_per_client", "workers", "max_message_mb",
                    "poll_seconds")
        at_least_zero = ("decode_queue", "batch_timeout_ms", "intra_op_threads", "port",
                         "model_config_file_poll_wait_seconds")
        bad = [name for name in positive if not getattr(self, name) > 0]
        bad += [name for name in at_least_zero if not getattr(self, name) >= 0]
        if self.rest_port < -1:
            bad.append("rest_port")
        if bad:
            shown = ", ".join(f"{flag_of(ServeConfig, name)} {getattr(self, name)!r}" for name in bad)
            raise UserError(f"server options out of range: {shown} (see `cli.py serve --help`)")
        if self.max_request_rows < self.max_batch_size:
            raise UserError(f"--max-request-rows ({self.max_request_rows}) must be at least --max-batch-size "
                            f"({self.max_batch_size})")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise UserError("TLS needs both --tls-cert and --tls-key")

    @property
    def rest_enabled(self) -> bool:
        return self.rest_port >= 0

    @property
    def batching(self) -> bool:
        return self.batch_timeout_ms > 0


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """Which experiment and checkpoint to export, where, and in which formats."""

    exp_id: str = dataclasses.field(metadata=option("Experiment id (folder under --workdir).", flag="--id"))
    output: str = dataclasses.field(metadata=option("Export root; writes OUTPUT/NAME/VERSION/.", path="dir"))
    workdir: str = _field(DEFAULT_WORKDIR, "Folder holding the experiments.")
    format: str = _field("all", "SavedModel (TF-Serving layout), ONNX, or both in the same version folder.",
                         choices=EXPORT_FORMATS)
    name: Optional[str] = _field(None, "Model name: one folder name under --output (no '/', no leading '.'). "
                                       "Default: the experiment id.")
    version: Optional[int] = _field(None, "Version number. Default: the next free number, claimed atomically "
                                          "(safe with concurrent exports).", min=1)
    checkpoint: str = _field("latest", "'latest', 'best' or a checkpoint path prefix.")
    opset: int = _field(17, f"ONNX opset for tf2onnx ({OPSETS[0]}..{OPSETS[1]}).", min=OPSETS[0], max=OPSETS[1])
    quantize: Optional[str] = _field(None, "Also write model.int8.onnx (static QDQ int8, calibrated on training "
                                           "images) and report its speed, top-1 agreement and accuracy change on "
                                           "validation images.", choices=QUANTIZATIONS)
    data_dir: Optional[str] = _field(None, "Dataset for the parity, calibration and int8 evaluation images. "
                                           "Default: the experiment's data dir.")
    overwrite: bool = _field(False, "Replace an existing version folder, but only an earlier export (it holds "
                                    "export.json) or an empty folder; anything else is refused and left untouched.")

    def __post_init__(self):
        if self.format not in EXPORT_FORMATS:
            raise UserError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, got {self.format!r}")
        if self.quantize is not None:
            if self.quantize not in QUANTIZATIONS:
                raise UserError(f"--quantize must be one of {', '.join(QUANTIZATIONS)}, got {self.quantize!r}")
            if self.format == "savedmodel":
                raise UserError("--quantize int8 applies to ONNX; use --format onnx or all")
        if not OPSETS[0] <= self.opset <= OPSETS[1]:
            raise UserError(f"--opset {self.opset} is not supported by tf2onnx 1.17; expected {OPSETS[0]}..{OPSETS[1]}")
        if self.version is not None and self.version < 1:
            raise UserError(f"--version must be a positive integer, got {self.version}")
        check_model_name(self.name or self.exp_id)

    @property
    def model_name(self) -> str:
        return self.name or self.exp_id


def check_model_name(name: str) -> str:
    """`name` if it is one plain path component (the model folder under --output), else a UserError."""
    if not name or name.startswith(".") or any(character in name for character in ("/", "\\", "\0")):
        raise UserError(f"model name {name!r} must be a single folder name (no '/', '\\', NUL or leading '.'); "
                        f"choose another --name")
    return name
