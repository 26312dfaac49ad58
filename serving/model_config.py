"""What the server serves: TF Serving's `ModelServerConfig` (text format), or one `--model-dir`.

    model_config_list {
      config {
        name: "revnet"  base_path: "exports/revnet"  model_platform: "onnx"
        model_version_policy { specific { versions: 1 versions: 2 } }
        version_labels { key: "stable" value: 1 }  version_labels { key: "canary" value: 2 }
      }
    }

The file is parsed with the protobuf classes that tensorflow-serving-api ships, so an unknown field or a
malformed value is refused as TF Serving refuses it. Each model becomes a `ModelEntry`: its name, folder
(a relative base_path is taken from the current directory, as TF Serving does), backend (model_platform
"onnx" or "tensorflow"; empty means `--backend`), version policy and labels. Checked here, before anything
loads: duplicate names, missing folders, unknown platforms, an empty `specific` policy, bad labels. That a
label names a version that is really served is checked once the versions are loaded (serving/repository.py).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Dict, Optional, Tuple

from revnet.common.errors import UserError

PLATFORMS = {"onnx": "onnx", "onnxruntime": "onnx", "tensorflow": "tf", "tf": "tf"}


@dataclasses.dataclass(frozen=True)
class VersionPolicy:
    """Which versions of a model to serve: the `latest` N that load, `all` that load, or `specific` ones."""

    kind: str = "latest"                  # "latest" | "all" | "specific"
    num_versions: int = 1                 # for latest
    versions: Tuple[int, ...] = ()        # for specific

    def describe(self) -> str:
        if self.kind == "latest":
            return f"latest {self.num_versions}"
        return "all" if self.kind == "all" else f"specific {list(self.versions)}"


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    name: str
    base_path: str
    backend: str
    policy: VersionPolicy = VersionPolicy()
    labels: Tuple[Tuple[str, int], ...] = ()   # (label, version), sorted by label

    @property
    def label_map(self) -> Dict[str, int]:
        return dict(self.labels)


def entry_for_model_dir(model_dir: str, backend: str) -> ModelEntry:
    """`--model-dir DIR/NAME`: one model named NAME, its latest version that loads."""
    return ModelEntry(os.path.basename(os.path.normpath(model_dir)), model_dir, backend)


def read_model_config_text(path: str) -> str:
    """The text of --model-config-file; a UserError naming why it cannot be read."""
    try:
        with open(path, "r", encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read --model-config-file {path!r}: {getattr(error, 'strerror', None) or error}") \
            from None


def parse_model_config(text_or_proto, default_backend: str, where: str = "the model config") -> Tuple[ModelEntry, ...]:
    """The checked entries of a ModelServerConfig given as text or as the message (a reload request's)."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    if isinstance(text_or_proto, str):
        config = model_server_config_pb2.ModelServerConfig()
        try:
            text_format.Parse(text_or_proto, config)
        except text_format.ParseError as error:
            raise UserError(f"{where} is not a valid ModelServerConfig: {' '.join(str(error).split())[:300]}") \
                from None
    else:
        config = text_or_proto
    if config.WhichOneof("config") != "model_config_list":
        raise UserError(f"{where} needs a model_config_list (custom_model_config is not supported)")
    entries = [_entry(model, default_backend, where) for model in config.model_config_list.config]
    if not entries:
        raise UserError(f"{where} lists no model")
    names = [entry.name for entry in entries]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise UserError(f"{where} names model {duplicates[0]!r} more than once")
    return tuple(entries)


def _entry(model, default_backend: str, where: str) -> ModelEntry:
    name = model.name
    if not name or "/" in name or ":" in name or name != name.strip():
        raise UserError(f"{where}: model name {name!r} must be non-empty, without '/', ':' or surrounding spaces")
    if not model.base_path:
        raise UserError(f"{where}: model {name!r} has no base_path")
    if not os.path.isdir(model.base_path):
        raise UserError(f"{where}: base_path {model.base_path!r} of model {name!r} is not a folder; expected "
                        f"DIR/NAME from `cli.py export`")
    platform = model.model_platform or ""
    if platform and platform not in PLATFORMS:
        raise UserError(f"{where}: model {name!r} has model_platform {platform!r}; expected one of "
                        f"{', '.join(sorted(PLATFORMS))}")
    policy = _policy(model.model_version_policy, name, where)
    labels = tuple(sorted(model.version_labels.items()))
    for label, version in labels:
        if not label or version <= 0:
            raise UserError(f"{where}: model {name!r} has version label {label!r} -> {version}; a label needs a name "
                            f"and a positive version")
    if policy.kind == "specific":
        outside = [f"{label} -> {version}" for label, version in labels if version not in policy.versions]
        if outside:
            raise UserError(f"{where}: model {name!r} labels versions its policy does not serve ({', '.join(outside)}; "
                            f"policy {policy.describe()})")
    return ModelEntry(name, model.base_path, PLATFORMS.get(platform, default_backend), policy, labels)


def _policy(message, name: str, where: str) -> VersionPolicy:
    kind = message.WhichOneof("policy_choice") or "latest"
    if kind == "latest":
        count = message.latest.num_versions or 1
        return VersionPolicy("latest", num_versions=count)
    if kind == "all":
        return VersionPolicy("all")
    versions = tuple(sorted(set(message.specific.versions)))
    if not versions or versions[0] <= 0:
        raise UserError(f"{where}: model {name!r} has a specific version policy without positive versions")
    return VersionPolicy("specific", versions=versions)


def same_source(a: Optional[ModelEntry], b: ModelEntry) -> bool:
    """True when two entries load the same files the same way (loaded versions can be kept across a reload)."""
    return a is not None and (os.path.realpath(a.base_path), a.backend) == (os.path.realpath(b.base_path), b.backend)
