"""The model updater as a pure state machine: no MQTT, no disk, no clock of its own.

The service feeds it manifests, chunks and clock ticks and carries out the actions it
returns (subscribe to a version's chunks, install verified bytes, report a rejection).
Nothing here raises on bad input: every failure is a ``Reject`` with a reason, and the
current model keeps serving. A version rejected for its content is not retried unless a
different manifest (other signature) is published for it; a download that timed out is
retried when the manifest is delivered again.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from shared import topics
from shared.bundle import ChunkAssembler, parse_manifest, verify_manifest
from shared.errors import BundleError, FedforgeError
from shared.schemas import MAX_MISSING_RANGES, ModelManifest
from shared.signing import TrustStore

MAX_REMEMBERED_REJECTIONS = 256


@dataclass(frozen=True, slots=True)
class Ignore:
    reason: str


@dataclass(frozen=True, slots=True)
class StartDownload:
    manifest: ModelManifest
    subscribe: str  # chunk filter of the new version
    unsubscribe: str | None  # chunk filter of an abandoned download, if any


@dataclass(frozen=True, slots=True)
class Reject:
    version: int | None
    reason: str
    unsubscribe: str | None = None
    sha256: str | None = None


@dataclass(frozen=True, slots=True)
class Complete:
    manifest: ModelManifest
    model_bytes: bytes
    unsubscribe: str


@dataclass(frozen=True, slots=True)
class RequestChunks:
    """A download stalled: ask the cloud to send these chunk ranges again (pull-by-block resume)."""

    version: int
    missing: tuple[tuple[int, int], ...]


Action = Ignore | StartDownload | Reject | Complete | RequestChunks


@dataclass(slots=True)
class _Download:
    manifest: ModelManifest
    assembler: ChunkAssembler
    filter: str
    last_progress: float
    last_request: float = 0.0


class ModelUpdater:
    def __init__(
        self,
        fleet: str,
        task: str,
        trust: TrustStore,
        *,
        current_version: int | None = None,
        floor: int | None = None,
        timeout_s: float = 60.0,
        resume_after_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fleet = fleet
        self.task = task
        self.trust = trust
        self.current_version = current_version
        # After a rollback from version F, manifests up to F are refused (anti-downgrade's twin:
        # a redelivered manifest of a withdrawn version must not undo the rollback).
        self.floor = floor
        # Pinned by an operator's command: no other version installs by manifest until unpinned.
        self.pinned: int | None = None
        self.timeout_s = timeout_s
        # Ask for missing chunks well before giving up: by default four times per timeout.
        self.resume_after_s = resume_after_s if resume_after_s is not None else timeout_s / 4
        self._clock = clock
        self._download: _Download | None = None
        # (version, signature) of bundles refused for their content, newest last; bounded, as
        # each forged manifest adds one (a forgotten one is only verified again and refused).
        self._rejected: OrderedDict[tuple[int, str], None] = OrderedDict()

    @property
    def downloading(self) -> int | None:
        return self._download.manifest.version if self._download else None

    def on_manifest(self, payload: bytes) -> Action:
        try:
            manifest = parse_manifest(payload)
        except BundleError as exc:
            return Reject(None, str(exc))
        if manifest.task != self.task:
            return Reject(manifest.version, f"manifest is for task {manifest.task!r}, this agent serves {self.task!r}")
        if self.pinned is not None and manifest.version != self.pinned:
            return Ignore(f"pinned to v{self.pinned}: version {manifest.version} waits until unpinned")
        if self.current_version is not None and manifest.version <= self.current_version:
            return Ignore(f"version {manifest.version} is not newer than {self.current_version}")
        if self.floor is not None and manifest.version <= self.floor:
            return Ignore(f"version {manifest.version} was withdrawn by a rollback (refusing <= {self.floor})")
        if (manifest.version, manifest.signature) in self._rejected:
            return Ignore(f"version {manifest.version} was already rejected")
        dl = self._download
        if dl is not None and dl.manifest == manifest:
            return Ignore(f"version {manifest.version} is already downloading")
        try:
            verify_manifest(manifest, self.trust)
        except BundleError as exc:
            self._remember_rejected(manifest.version, manifest.signature)
            return Reject(manifest.version, str(exc), sha256=manifest.sha256)
        old_filter = self._abandon()
        new_filter = topics.chunks_filter(self.fleet, self.task, manifest.version)
        self._download = _Download(manifest, ChunkAssembler(manifest), new_filter, self._clock())
        return StartDownload(manifest, new_filter, old_filter if old_filter != new_filter else None)

    def start_authorised(self, manifest: ModelManifest) -> Action:
        """Download ``manifest`` whatever its version: a verified, signed command asked for exactly it."""
        if manifest.task != self.task:
            return Reject(manifest.version, f"manifest is for task {manifest.task!r}, this agent serves {self.task!r}")
        try:
            verify_manifest(manifest, self.trust)
        except BundleError as exc:
            return Reject(manifest.version, str(exc), sha256=manifest.sha256)
        dl = self._download
        if dl is not None and dl.manifest == manifest:
            return Ignore(f"version {manifest.version} is already downloading")
        old_filter = self._abandon()
        new_filter = topics.chunks_filter(self.fleet, self.task, manifest.version)
        self._download = _Download(manifest, ChunkAssembler(manifest), new_filter, self._clock())
        return StartDownload(manifest, new_filter, old_filter if old_filter != new_filter else None)

    def pin(self, version: int | None) -> str | None:
        """Hold ``version`` (None: follow releases again); returns the chunk filter of a download it ends."""
        self.pinned = version
        dl = self._download
        if version is not None and dl is not None and dl.manifest.version != version:
            return self._abandon()
        return None

    def end_download(self, version: int | None) -> str | None:
        """End the download of ``version``, if one runs; returns its chunk filter.

        A signed command's download is ended when a newer command supersedes the command:
        completed later, it would install a version nobody asks for any more.
        """
        dl = self._download
        if version is not None and dl is not None and dl.manifest.version == version:
            return self._abandon()
        return None

    def rolled_back(self, from_version: int | None, to_version: int) -> None:
        """``to_version`` now serves by command; versions up to ``from_version`` stay refused by manifest."""
        self.current_version = to_version
        if from_version is not None and from_version > to_version:
            self.floor = max(self.floor or 0, from_version)

    def on_chunk(self, version: int, index: int, data: bytes) -> Action:
        dl = self._download
        if dl is None or dl.manifest.version != version:
            return Ignore(f"no download in progress for version {version}")
        try:
            dl.assembler.add(index, data)
            dl.last_progress = self._clock()
            if not dl.assembler.complete:
                return Ignore(f"chunk {index} stored ({dl.assembler.received()}/{dl.manifest.chunk_count})")
            model_bytes = dl.assembler.assemble()
        except FedforgeError as exc:
            return self._fail(dl, str(exc), remember=True)
        self._download = None
        return Complete(dl.manifest, model_bytes, dl.filter)

    def tick(self) -> Reject | RequestChunks | None:
        """Ask again for what is missing after ``resume_after_s`` without progress; give up after ``timeout_s``."""
        dl = self._download
        if dl is None:
            return None
        now = self._clock()
        if now - dl.last_progress < self.timeout_s:
            if now - max(dl.last_progress, dl.last_request) < self.resume_after_s:
                return None
            dl.last_request = now
            missing = dl.assembler.missing_ranges()[:MAX_MISSING_RANGES]
            return RequestChunks(dl.manifest.version, tuple(missing))
        got, total = dl.assembler.received(), dl.manifest.chunk_count
        missing = dl.assembler.missing_ranges()
        reason = f"download timed out after {self.timeout_s:g} s: {got} of {total} chunks, missing {missing[:5]}"
        return self._fail(dl, reason, remember=False)

    def installed(self, version: int) -> None:
        """The service installed ``version`` (from a download or from disk)."""
        self.current_version = version

    def install_failed(self, manifest: ModelManifest) -> None:
        """Verified bytes that still could not be served (e.g. ONNX Runtime refused them)."""
        self._remember_rejected(manifest.version, manifest.signature)

    def missing_ranges(self) -> list[tuple[int, int]]:
        return self._download.assembler.missing_ranges() if self._download else []

    def _fail(self, dl: _Download, reason: str, *, remember: bool) -> Reject:
        if remember:
            self._remember_rejected(dl.manifest.version, dl.manifest.signature)
        self._download = None
        return Reject(dl.manifest.version, reason, unsubscribe=dl.filter, sha256=dl.manifest.sha256)

    def _remember_rejected(self, version: int, signature: str) -> None:
        self._rejected[(version, signature)] = None
        while len(self._rejected) > MAX_REMEMBERED_REJECTIONS:
            self._rejected.popitem(last=False)

    def _abandon(self) -> str | None:
        dl, self._download = self._download, None
        return dl.filter if dl else None
