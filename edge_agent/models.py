"""The served model's lifecycle on the agent: download, verify, install, swap, reject.

The updater (``edge_agent.updater``) decides; this class carries its decisions out against
MQTT subscriptions, the model files on disk and the ONNX Runtime slot. A new scorer is
fully built before the swap, so a batch in flight finishes on the old model and the next
one uses the new; a bundle that fails any check is rejected with its reason, recorded in
the store, and the current model keeps serving.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from edge_agent.config import AgentSettings
from edge_agent.inference import LoadedModel, ModelSlot, OnnxScorer
from edge_agent.mqtt import AgentLink
from edge_agent.store import AgentStore
from edge_agent.updater import (
    Action,
    Complete,
    Ignore,
    ModelFiles,
    ModelUpdater,
    Pin,
    Reject,
    RequestChunks,
    StartDownload,
)
from shared import topics
from shared.bundle import parse_manifest
from shared.commands import verify_device_command, verify_rollback
from shared.errors import BundleError, TopicError
from shared.mqtt import MessageHandler
from shared.schemas import ChunkRequest, Command, CommandAck, ModelManifest, Rejection
from shared.signing import TrustStore

log = logging.getLogger(__name__)


class ModelManager:
    def __init__(
        self,
        settings: AgentSettings,
        store: AgentStore,
        trust: TrustStore,
        link: AgentLink,
        *,
        on_change: Callable[[bool], None],
        on_chunk: MessageHandler,
        on_ack: Callable[[CommandAck], None] | None = None,
    ) -> None:
        self.store = store
        self.trust = trust
        self.link = link
        self.slot = ModelSlot()
        self.files = ModelFiles(settings.models_dir)
        self.updater = ModelUpdater(settings.fleet, settings.task, trust, timeout_s=settings.download_timeout_s)
        self.device_id = settings.device_id
        self.fleet = settings.fleet
        self.task = settings.task
        # A verified rollback, pin or unpin waiting for its download: (command, version served when it came).
        self._pending: tuple[Command, int | None] | None = None
        # The newest release manifest that arrived while pinned: followed once unpinned.
        self._held_manifest: bytes | None = None
        self._on_ack = on_ack
        self.last_rejection: Rejection | None = None
        # Called with True after an install, False after a rejection (on the agent's loop).
        self._on_change = on_change
        # Chunk subscriptions deliver through the agent's read batches, like every other message.
        self._on_chunk = on_chunk

    @property
    def version(self) -> int | None:
        loaded = self.slot.current
        return loaded.version if loaded else None

    # -- inputs ----------------------------------------------------------------------------

    @property
    def pinned(self) -> int | None:
        return self.updater.pinned

    def on_manifest(self, payload: bytes) -> None:
        if self.updater.pinned is not None:
            self._held_manifest = payload
        self._apply(self.updater.on_manifest(payload))

    def on_chunk_topic(self, topic: str, payload: bytes) -> None:
        try:
            parsed = topics.parse(topic)
        except TopicError:
            parsed = None
        if parsed is None or parsed.kind != "chunk" or parsed.version is None or parsed.index is None:
            log.warning("unexpected message on %s", topic)
            return
        self._apply(self.updater.on_chunk(parsed.version, parsed.index, payload))

    def tick(self) -> None:
        """Resume a stalled download, or abandon it (retried when the manifest comes again)."""
        action = self.updater.tick()
        if action is not None:
            self._apply(action)

    def load_from_disk(self) -> None:
        """Serve the installed model after a restart, verified again (files can be tampered with)."""
        if self.files.current_version() is None:
            return
        try:
            stored = self.files.load_current(self.trust)
            scorer = OnnxScorer(stored.model_bytes, stored.manifest)
        except BundleError as exc:
            log.error("the model on disk is not served: %s", exc)
            self.last_rejection = Rejection(version=self.files.current_version(), reason=str(exc), at=time.time())
            return
        self.slot.swap(LoadedModel(scorer, stored.manifest))
        self.updater.installed(stored.manifest.version)
        self.updater.floor = self.files.floor()
        log.info("loaded model v%d from %s", stored.manifest.version, self.files.directory)

    def load_pin(self) -> None:
        """Hold the pinned version after a restart (its command may have expired on the broker since)."""
        pin = self.files.pin()
        if pin is not None and pin.version is not None:
            self.updater.pin(pin.version)
            log.info("pinned to v%d by command %s", pin.version, pin.command_id)

    # -- signed commands (rollback, pin, unpin) ----------------------------------------------

    def on_command(self, command: Command) -> None:
        """Verify a rollback, pin or unpin, then carry it out; ack either way.

        While pinned, the updater ignores every other manifest and ends any other download
        (``ModelUpdater.pin``), so nothing but the pinned version completes."""
        if command.kind in ("pin", "unpin"):
            self._on_device_command(command)
            return
        try:
            manifest = verify_rollback(command, self.trust, fleet=self.fleet, task=self.task)
        except BundleError as exc:
            log.warning("refused command %s: %s", command.command_id, exc)
            self._ack(command, False, str(exc))
            return
        current = self.slot.current
        if self.updater.pinned is not None and self.updater.pinned != manifest.version:
            self._ack(command, False, f"pinned to v{self.updater.pinned} by the operator: unpin it first")
            return
        if current is not None and current.version == manifest.version:
            self._supersede_pending(command, manifest.version)
            self._ack(command, True, f"serving v{manifest.version}")
            return
        if current is not None and current.manifest.created > command.issued_at:
            # A release made after the command supersedes it (the cloud also clears it, but retained
            # messages and redeliveries can arrive in any order).
            self._ack(command, False, f"superseded: serving v{current.version}, released after the command")
            return
        self._supersede_pending(command, manifest.version)
        self._serve_exactly(command, manifest)

    def _on_device_command(self, command: Command) -> None:
        """A pin holds one version against every release; an unpin follows the fleet again."""
        try:
            manifest = verify_device_command(
                command, self.trust, fleet=self.fleet, task=self.task, device_id=self.device_id
            )
        except BundleError as exc:
            log.warning("refused command %s: %s", command.command_id, exc)
            self._ack(command, False, str(exc))
            return
        last = self.files.pin()
        if last is not None and command.command_id == last.command_id:
            if command.kind == "unpin" or self.version == last.version:
                self._ack(command, True, self._pin_state())  # a redelivery: already carried out
                return
        elif last is not None and command.issued_at <= last.issued_at:
            self._ack(command, False, f"stale: command {last.command_id} was issued after it")
            return
        target = manifest.version if command.kind == "pin" and manifest is not None else None
        try:
            self.files.save_pin(Pin(target, command.command_id, command.issued_at))
        except OSError as exc:
            self._ack(command, False, f"cannot record the {command.kind}: {exc}")
            return
        self._supersede_pending(command, None if manifest is None else manifest.version)
        ended = self.updater.pin(target)
        if ended is not None:
            self.link.unsubscribe(ended)
        log.info("command %s: %s", command.command_id, f"pinned to v{target}" if target else "unpinned")
        if command.kind == "pin":
            assert manifest is not None
            self._serve_exactly(command, manifest)
            return
        held, self._held_manifest = self._held_manifest, None
        release = self._newest(held)
        if release is not None and (manifest is None or release.version > manifest.version):
            # A release made after the unpin was issued: install it as any release.
            assert held is not None
            self._ack(command, True, f"unpinned: following the release v{release.version}")
            self.on_manifest(held)
        elif manifest is not None and manifest.version != self.version:
            self._serve_exactly(command, manifest)
        else:
            self._ack(command, True, f"unpinned: serving v{self.version}")

    def _newest(self, payload: bytes | None) -> ModelManifest | None:
        if payload is None:
            return None
        try:
            return parse_manifest(payload)
        except BundleError:
            return None  # the updater rejects it with its reason when it is replayed

    def _pin_state(self) -> str:
        pinned = f"pinned to v{self.updater.pinned}" if self.updater.pinned is not None else "unpinned"
        return f"{pinned}: serving v{self.version}"

    def _supersede_pending(self, command: Command, target: int | None) -> None:
        """``command`` (accepted) replaces the one waiting for its download, if another.

        The waiting one is answered, and its download ended unless ``command`` wants the same
        version (``target``): left running, it would install that version when its chunks came,
        as if it were a release, after the operator had asked for something else.
        """
        pending, self._pending = self._pending, None
        if pending is None or pending[0].command_id == command.command_id:
            return
        self._ack(pending[0], False, f"superseded by command {command.command_id}")
        if pending[0].version != target:
            ended = self.updater.end_download(pending[0].version)
            if ended is not None:
                self.link.unsubscribe(ended)
                log.info("ended the download of v%s for command %s", pending[0].version, pending[0].command_id)

    def _serve_exactly(self, command: Command, manifest: ModelManifest) -> None:
        """Serve ``manifest``'s version, newer or older, from the kept files or by download."""
        serving = self.version
        if serving == manifest.version:
            self._ack(command, True, self._pin_state() if command.kind != "rollback" else f"serving v{serving}")
            return
        if self.files.has_version(manifest.version):
            try:
                stored = self.files.load_version(manifest.version, self.trust)
                if stored.manifest.sha256 != manifest.sha256:
                    raise BundleError("the kept file has another digest")
                scorer = OnnxScorer(stored.model_bytes, stored.manifest)
            except BundleError as exc:
                log.warning("kept v%d is unusable (%s); downloading it", manifest.version, exc)
            else:
                try:
                    self._switch(command, manifest, stored.model_bytes, scorer, serving)
                except OSError as exc:  # the disk refused the pointer: keep serving, say why
                    self._ack(command, False, f"cannot switch to v{manifest.version}: {exc}")
                return
        self._pending = (command, serving)
        log.info("%s %s: downloading v%d", command.kind, command.command_id, manifest.version)
        self._apply(self.updater.start_authorised(manifest))

    def _switch(
        self, command: Command, manifest: ModelManifest, model_bytes: bytes, scorer: OnnxScorer, serving: int | None
    ) -> None:
        self.files.save(manifest, model_bytes)
        self.slot.swap(LoadedModel(scorer, manifest))
        if command.kind == "pin":
            self.updater.installed(manifest.version)  # a hold, not a withdrawal: no floor
        else:
            self.updater.rolled_back(serving, manifest.version)
            self.files.save_floor(self.updater.floor)
        self.store.record_model_event(manifest.version, "installed", f"command {command.command_id}", manifest.sha256)
        log.info("%s to v%d (was %s) by command %s", command.kind, manifest.version, serving, command.command_id)
        self._ack(command, True, f"serving v{manifest.version} (was v{serving})")
        self._on_change(True)

    def _ack(self, command: Command, accepted: bool, reason: str) -> None:
        if self._on_ack is None:
            return
        ack = CommandAck(
            command_id=command.command_id,
            device_id=self.device_id,
            kind=command.kind,
            version=command.version,
            accepted=accepted,
            reason=reason[:1000],
            serving_version=self.version,
            ts=time.time(),
        )
        self._on_ack(ack)

    # -- decisions -------------------------------------------------------------------------

    def _apply(self, action: Action) -> None:
        if isinstance(action, Ignore):
            log.debug("updater: %s", action.reason)
        elif isinstance(action, StartDownload):
            if action.unsubscribe:
                self.link.unsubscribe(action.unsubscribe)
            pending = self._pending
            if pending is not None and pending[0].version != action.manifest.version:
                # A release replaced the download the command waits on: answer it, or it waits forever.
                self._pending = None
                self._ack(pending[0], False, f"superseded by the release v{action.manifest.version}")
            log.info("downloading model v%d (%d chunks)", action.manifest.version, action.manifest.chunk_count)
            self.link.subscribe(action.subscribe, self._on_chunk)
        elif isinstance(action, Reject):
            if action.unsubscribe:
                self.link.unsubscribe(action.unsubscribe)
            self._reject(action.version, action.reason, action.sha256)
        elif isinstance(action, Complete):
            self.link.unsubscribe(action.unsubscribe)
            self._install(action)
        elif isinstance(action, RequestChunks):
            log.info("model v%d: no chunk for a while, asking again for %s", action.version, list(action.missing[:5]))
            request = ChunkRequest(
                device_id=self.device_id, task=self.task, version=action.version, missing=action.missing
            )
            self.link.publish_chunk_request(request)

    def _install(self, done: Complete) -> None:
        manifest = done.manifest
        pending = self._pending
        if pending is not None and pending[0].version == manifest.version:
            self._pending = None
            try:
                scorer = OnnxScorer(done.model_bytes, manifest)
                self._switch(pending[0], manifest, done.model_bytes, scorer, pending[1])
            except (BundleError, OSError) as exc:
                self._ack(pending[0], False, str(exc))
                self._reject(manifest.version, str(exc), manifest.sha256)
            return
        try:
            scorer = OnnxScorer(done.model_bytes, manifest)  # fully built before the swap
            self.files.save(manifest, done.model_bytes)
        except (BundleError, OSError) as exc:
            self.updater.install_failed(manifest)
            self._reject(manifest.version, str(exc), manifest.sha256)
            return
        old = self.slot.swap(LoadedModel(scorer, manifest))
        self.updater.installed(manifest.version)
        self.store.record_model_event(manifest.version, "installed", "", manifest.sha256)
        log.info("model v%d installed (was %s)", manifest.version, old.version if old else "none")
        self._on_change(True)

    def _reject(self, version: int | None, reason: str, sha256: str | None) -> None:
        pending = self._pending
        if pending is not None and pending[0].version == version:
            self._pending = None
            self._ack(pending[0], False, reason)
        log.warning("model v%s rejected: %s", version, reason)
        self.last_rejection = Rejection(version=version, reason=reason, at=time.time())
        try:
            self.store.record_model_event(version, "rejected", reason, sha256)
        finally:
            self._on_change(False)
