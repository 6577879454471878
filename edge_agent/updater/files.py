"""The installed models on disk: ``models/v{N}.onnx`` + ``v{N}.manifest.json`` + ``current``.

Every file is written to a temporary name, fsynced and renamed, and the ``current`` pointer
is switched last, so a crash at any point leaves either the old or the new model, whole.
What is loaded back is verified again (signature, size, sha256): the disk is not trusted.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from shared.bundle import parse_manifest, verify_manifest, verify_model_bytes
from shared.errors import BundleError
from shared.fileio import atomic_write_bytes
from shared.schemas import ModelManifest
from shared.signing import TrustStore

log = logging.getLogger(__name__)

POINTER = "current"
FLOOR = "rollback-floor"
PIN = "pin.json"


@dataclass(frozen=True, slots=True)
class Pin:
    """The operator's hold on this device (``pin``/``unpin`` commands), kept across restarts.

    ``version`` None: not pinned. ``command_id`` and ``issued_at`` name the newest pin or
    unpin applied, so an older one (redelivered, replayed) is refused as stale.
    """

    version: int | None
    command_id: str
    issued_at: float


@dataclass(frozen=True, slots=True)
class StoredModel:
    manifest: ModelManifest
    model_bytes: bytes


class ModelFiles:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def model_path(self, version: int) -> Path:
        return self.directory / f"v{version}.onnx"

    def manifest_path(self, version: int) -> Path:
        return self.directory / f"v{version}.manifest.json"

    def save(self, manifest: ModelManifest, model_bytes: bytes) -> None:
        """Write the model and its manifest, then point ``current`` at them."""
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.model_path(manifest.version), model_bytes)
        atomic_write_bytes(self.manifest_path(manifest.version), manifest.to_bytes())
        atomic_write_bytes(self.directory / POINTER, f"{manifest.version}\n".encode())

    def current_version(self) -> int | None:
        try:
            text = (self.directory / POINTER).read_text().strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isascii() and text.isdigit() else None

    def floor(self) -> int | None:
        """Versions up to this were withdrawn by a rollback (survives restarts)."""
        try:
            text = (self.directory / FLOOR).read_text().strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isascii() and text.isdigit() else None

    def save_floor(self, floor: int | None) -> None:
        if floor is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.directory / FLOOR, f"{floor}\n".encode())

    def pin(self) -> Pin | None:
        """The pin saved by the last pin or unpin; None if none was applied (or the file is unreadable)."""
        try:
            raw = json.loads((self.directory / PIN).read_bytes())
            version = raw["version"]
            if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
                raise ValueError(f"version {version!r}")
            return Pin(version, str(raw["command_id"]), float(raw["issued_at"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError) as exc:
            # The retained pin on the broker applies again: nothing the operator decided is lost.
            log.error("%s is unreadable (%s): this device is not pinned until a pin arrives", PIN, exc)
            return None

    def save_pin(self, pin: Pin) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.directory / PIN, json.dumps(asdict(pin)).encode())

    def has_version(self, version: int) -> bool:
        return self.model_path(version).is_file() and self.manifest_path(version).is_file()

    def load_current(self, trust: TrustStore) -> StoredModel:
        """The current model, re-verified; ``BundleError`` if it is absent or fails a check."""
        version = self.current_version()
        if version is None:
            raise BundleError("no current model on disk")
        return self.load_version(version, trust)

    def load_version(self, version: int, trust: TrustStore) -> StoredModel:
        """A kept model (the cache a rollback uses), re-verified; ``BundleError`` if absent or bad."""
        try:
            manifest_bytes = self.manifest_path(version).read_bytes()
            model_bytes = self.model_path(version).read_bytes()
        except OSError as exc:
            raise BundleError(f"model v{version} on disk is unreadable: {exc}") from None
        manifest = parse_manifest(manifest_bytes)
        if manifest.version != version:
            raise BundleError(f"manifest on disk says version {manifest.version}, pointer says {version}")
        verify_manifest(manifest, trust)
        verify_model_bytes(manifest, model_bytes)
        return StoredModel(manifest, model_bytes)
