"""The served models and versions: one `ModelRepository` per model, all of them in one `ModelManager`.

A repository serves the versions its policy picks among the version folders whose files match their
recorded SHA-256 and load (warm-up included): the `latest` N that load, `all` that load, or the
`specific` ones. A broken version is logged once and skipped until its files change; with `latest`, a
lower good version is served in its place, and newer good versions are still picked up. `poll()` loads
new versions and drops those the policy no longer picks.

The served set of a repository, and the manager's set of repositories, are replaced whole (never
changed in place), so a request holds the servable it resolved until it finishes: unloading a version
or a model, or reloading the config, never drops an in-flight request. A reload builds the new set
first, reusing every loaded version of a model whose files and backend did not change, checks it
(every model has a version that loads, every label names a served version), and only then replaces the
old set; a config that fails any check is refused and the old one keeps serving.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from revnet.common.errors import UserError
from revnet.serving import layout
from revnet.serving.backends import Servable, has_artifact, load_servable, model_file
from revnet.serving.serve_config import BACKENDS
from revnet.serving.model_config import ModelEntry, entry_for_model_dir, same_source
from revnet.serving.outcomes import name_one, name_some

log = logging.getLogger(__name__)

OnLoad = Callable[[str, int, bool, int], None]   # (model, version, ok, warm-up requests)


def _folder_state(path: str) -> Tuple:
    """Names, sizes and modification times of a version folder's files: a broken version is retried when it changes."""
    state = []
    for root, _, files in os.walk(path):
        for file_name in files:
            try:
                stat = os.stat(os.path.join(root, file_name))
            except OSError:
                continue
            state.append((os.path.relpath(os.path.join(root, file_name), path), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(state))


class ModelRepository:
    """The served versions of one model (a ModelEntry, or DIR/NAME served by its latest version)."""

    def __init__(self, source: Union[ModelEntry, str], backend: Optional[str] = None, onnx_file: str = layout.ONNX_FILE,
                 intra_op_threads: int = 0, on_load: Optional[OnLoad] = None,
                 warmup: Optional[Callable[[Servable], int]] = None, previous: Optional["ModelRepository"] = None):
        """`on_load` is called after each load attempt; `warmup(servable)` replays a new version's warm-up
        requests (returning their count) before it is served, and a failure fails its load. `previous`, the
        repository this one replaces on a reload, lends its loaded versions when the files are the same."""
        entry = source if isinstance(source, ModelEntry) else entry_for_model_dir(source, backend or "onnx")
        if entry.backend not in BACKENDS:
            raise UserError(f"backend must be one of {', '.join(BACKENDS)}, got {entry.backend!r}")
        if not os.path.isdir(entry.base_path):
            raise UserError(f"model folder {entry.base_path!r} does not exist; expected DIR/NAME from `cli.py export`")
        self.entry, self.name, self.model_dir, self.backend = entry, entry.name, entry.base_path, entry.backend
        self.onnx_file, self.intra_op_threads = onnx_file, intra_op_threads
        self.on_load = on_load or (lambda name, version, ok, warmup_requests: None)
        self.warmup = warmup or (lambda servable: 0)
        self._served: Dict[int, Servable] = {}
        self._broken: Dict[int, Tuple[Tuple, str]] = {}  # version -> (folder state when it failed, reason)
        self._ignored: Dict[int, str] = {}  # version -> the real path of a folder without a model file, logged
        self._absent: set = set()  # specific versions not on disk, logged
        if previous is not None and same_source(previous.entry, entry) and previous.onnx_file == onnx_file:
            self._served, self._broken, self._ignored = dict(previous._served), dict(previous._broken), \
                dict(previous._ignored)
        self.listeners: List[Callable[["ModelRepository"], None]] = []  # called after the served set changes
        self._poll_lock = threading.Lock()
        if not self.poll():
            artifact = model_file(entry.backend, onnx_file)
            broken = sorted(self._broken.items(), reverse=True)
            reasons = "; ".join(f"version {v}: {reason}" for v, (_, reason) in broken)
            raise UserError(f"model {entry.name!r}: {entry.base_path!r} has no version folder with a {entry.backend} "
                            f"model ({artifact}) that loads under policy {entry.policy.describe()}"
                            + (f" ({reasons})" if reasons else "; run `cli.py export`"))

    def available_versions(self) -> List[int]:
        """Version folders holding this backend's model file; any other is logged once (until it changes)."""
        versions = []
        for version in layout.list_versions(self.model_dir):
            path = os.path.join(self.model_dir, str(version))
            if has_artifact(path, self.backend, self.onnx_file):
                versions.append(version)
                self._ignored.pop(version, None)
            elif self._ignored.get(version) != os.path.realpath(path):
                self._ignored[version] = os.path.realpath(path)
                target = f" (a link to {os.path.realpath(path)})" if os.path.islink(path) else ""
                artifact = model_file(self.backend, self.onnx_file)
                log.warning("version folder %s%s holds no %s, so it is not an export for the %s backend; ignoring it",
                            path, target, artifact, self.backend)
        return versions

    def _candidates(self) -> List[int]:
        """Versions the policy may serve, best first."""
        available = self.available_versions()
        policy = self.entry.policy
        if policy.kind != "specific":
            return sorted(available, reverse=True)
        for version in sorted(set(policy.versions) - set(available) - self._absent):
            log.warning("model %s: version %d of its specific policy has no %s folder; it is served once it appears",
                        self.name, version, self.backend)
        self._absent = set(policy.versions) - set(available)
        return sorted(set(policy.versions) & set(available), reverse=True)

    def _load(self, version: int) -> Optional[Servable]:
        state = _folder_state(os.path.join(self.model_dir, str(version)))
        if version in self._broken and self._broken[version][0] == state:
            return None  # already logged; retried only once its files change
        try:
            servable = load_servable(self.model_dir, version, self.backend, self.onnx_file, self.intra_op_threads,
                                     name=self.name)
            warmup_requests = self.warmup(servable)
        except Exception as error:  # noqa: BLE001 - a broken version must not take the server down
            reason = " ".join(f"{type(error).__name__}: {error}".split())[:1000]
            self._broken[version] = (state, reason)
            self.on_load(self.name, version, False, 0)
            log.error("cannot load %s version %d, skipping it until its files change: %s", self.name, version, reason)
            log.debug("loading %s version %d failed", self.name, version, exc_info=True)
            return None
        self._broken.pop(version, None)
        self.on_load(self.name, version, True, warmup_requests)
        log.info("loaded %s version %d (%s)%s", self.name, version, self.backend,
                 f" after {warmup_requests} warm-up requests" if warmup_requests else "")
        return servable

    def poll(self) -> bool:
        """Load what the policy picks and is not loaded, drop what it no longer picks; True when something is served."""
        with self._poll_lock:
            served, policy = self._served, self.entry.policy
            limit = policy.num_versions if policy.kind == "latest" else None
            chosen: Dict[int, Servable] = {}
            for version in self._candidates():
                if limit is not None and len(chosen) >= limit:
                    break
                servable = served.get(version) or self._load(version)
                if servable is not None:
                    chosen[version] = servable
            if not chosen and served:
                return True  # every folder gone or broken: keep serving what was loaded rather than nothing
            if set(chosen) != set(served):
                for version in sorted(set(served) - set(chosen)):
                    log.info("unloading %s version %d (policy %s); requests it holds finish on it", self.name,
                             version, policy.describe())
                self._served = chosen
                log.info("serving %s versions %s (%s)", self.name, sorted(chosen), self.backend)
                for listener in self.listeners:
                    listener(self)
            return bool(self._served)

    def versions(self) -> List[int]:
        return sorted(self._served)

    def current(self) -> Servable:
        """The highest served version (what a request without a version gets)."""
        served = self._served
        return served[max(served)]

    def label_target(self, label: str) -> int:
        labels = self.entry.label_map
        if label not in labels:
            raise UserError(f"version label {name_one(label)} of model {self.name!r} not found; its labels: "
                            f"{name_some(labels) if labels else 'none'}", not_found=True)
        return labels[label]

    def get(self, version: Optional[int] = None, label: Optional[str] = None) -> Servable:
        """The servable for a request's version or label (neither: the highest served), or a NOT_FOUND UserError."""
        served = self._served
        if label:
            version = self.label_target(label)
        if version is None:
            return served[max(served)]
        if version not in served:
            via = f" (label {label!r})" if label else ""
            raise UserError(f"version {version}{via} of model {self.name!r} is not loaded; serving versions "
                            f"{sorted(served)}", not_found=True)
        return served[version]

    def check_labels(self) -> None:
        """UserError naming a label whose version is not served."""
        served = sorted(self._served)
        for label, version in self.entry.labels:
            if version not in served:
                raise UserError(f"model {self.name!r}: version label {label!r} points to version {version}, which is "
                                f"not served (serving versions {served})")


class ModelManager:
    """Every served model by name; `reload(entries)` swaps in a new config only when all of it checks out."""

    def __init__(self, entries: Sequence[ModelEntry], make_repository: Callable[..., ModelRepository]):
        """`make_repository(entry, previous)` builds (and loads) one model's repository."""
        self._make = make_repository
        self._lock = threading.Lock()
        self.listeners: List[Callable[[Dict[str, ModelRepository]], None]] = []  # after each change of the set
        self._models: Dict[str, ModelRepository] = self._build(entries, {})

    def _build(self, entries: Sequence[ModelEntry], previous: Dict[str, ModelRepository]) -> Dict[str, ModelRepository]:
        models = {}
        for entry in entries:
            repository = self._make(entry, previous.get(entry.name))
            repository.check_labels()
            repository.listeners.append(lambda _: self._changed())
            models[entry.name] = repository
        return models

    def _changed(self) -> None:
        for listener in self.listeners:
            listener(self._models)

    @property
    def models(self) -> Dict[str, ModelRepository]:
        return self._models

    def names(self) -> List[str]:
        return sorted(self._models)

    def repository(self, name: str) -> ModelRepository:
        """The model a request names ("" is the only model, when there is one), or a NOT_FOUND UserError."""
        models = self._models
        if not name:
            if len(models) == 1:
                return next(iter(models.values()))
            raise UserError(f"the request names no model; this server serves {name_some(models)}", not_found=True)
        if name not in models:
            raise UserError(f"model {name_one(name)} is not served; this server serves {name_some(models)}",
                            not_found=True)
        return models[name]

    def get(self, name: str, version: Optional[int] = None, label: Optional[str] = None) -> Servable:
        return self.repository(name).get(version, label)

    def poll(self) -> None:
        with self._lock:
            for repository in self._models.values():
                repository.poll()

    def reload(self, entries: Sequence[ModelEntry]) -> None:
        """Serve `entries` instead, or raise UserError (and keep serving the old config) if any of it fails."""
        with self._lock:
            models = self._build(entries, self._models)
            old, self._models = self._models, models
        added, removed = sorted(set(models) - set(old)), sorted(set(old) - set(models))
        log.info("model config reloaded: serving %s%s%s", self.names(), f"; added {added}" if added else "",
                 f"; removed {removed} (their in-flight requests finish)" if removed else "")
        self._changed()
