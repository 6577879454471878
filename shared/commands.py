"""Signed fleet commands: the operator key authorises what the anti-downgrade rule forbids.

A rollback command names fleet, task, version and sha256 and is signed (Ed25519, canonical
JSON) with the same operator key as manifests, so an agent trusts it exactly as far as it
trusts releases. The manifest riding along is verified separately (its own signature) and
must name the same version and digest. A pin is the same for one device (its id is signed
too); an unpin carries the fleet's release the same way, or no version when there is none.

A federation call (``FederationCall``: "a training run is open, start your SuperNode") is
signed the same way: all it can make an agent do is connect to the SuperLink it is
configured with, but a forged ``ended`` would pull agents out of a run, and a replayed
old call is refused by its expiry and by being older than the call the agent holds.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.bundle import verify_manifest
from shared.errors import BundleError, SignatureError
from shared.schemas import Command, FederationCall, ModelManifest
from shared.signing import TrustStore, key_id, sign

DeviceCommandKind = Literal["pin", "unpin"]

# The agent settings an operator may set remotely (a ``config`` command): how the agent
# works, never who it is or whom it trusts (identity, broker, keys, TLS, paths stay local).
REMOTE_SETTINGS = frozenset(
    {
        "heartbeat_s",
        "max_batch",
        "alert_threshold",
        "download_timeout_s",
        "outbox_max_rows",
        "disk_budget_mb",
        "disk_check_s",
        "worker_idle_exit_s",
        "federation_mode",
        "federation_idle_stop_s",
        "supernode_fast_poll_s",
        "supernode_fast_window_s",
    }
)


def command_signed_fields(command: Command) -> dict[str, Any]:
    """Everything but the signature and the manifest (which carries its own).

    A fleet command has no ``device_id``; leaving the absent field out keeps the signatures
    of commands made before the field existed valid.
    """
    fields = command.model_dump(mode="json", exclude={"signature", "manifest"})
    if fields.get("device_id") is None:
        fields.pop("device_id", None)
    return fields


def _signed(key: Ed25519PrivateKey, **fields: Any) -> Command:
    unsigned = Command(signer=key_id(key.public_key()), **fields)
    return unsigned.model_copy(update={"signature": sign(key, command_signed_fields(unsigned))})


def rollback_command(
    key: Ed25519PrivateKey,
    *,
    command_id: str,
    fleet: str,
    manifest: ModelManifest,
    issued_by: str,
    ttl_s: float,
    now: float | None = None,
) -> Command:
    issued = time.time() if now is None else now
    return _signed(
        key,
        command_id=command_id,
        kind="rollback",
        expires_at=issued + ttl_s,
        version=manifest.version,
        fleet=fleet,
        task=manifest.task,
        sha256=manifest.sha256,
        issued_at=issued,
        issued_by=issued_by,
        manifest=manifest,
    )


def device_command(
    key: Ed25519PrivateKey,
    *,
    kind: DeviceCommandKind,
    command_id: str,
    fleet: str,
    task: str,
    device_id: str,
    manifest: ModelManifest | None,
    issued_by: str,
    ttl_s: float,
    now: float | None = None,
) -> Command:
    """A pin (``manifest``: the version to hold) or an unpin (``manifest``: the release, if any)."""
    if kind == "pin" and manifest is None:
        raise ValueError("a pin names the version it holds")
    issued = time.time() if now is None else now
    return _signed(
        key,
        command_id=command_id,
        kind=kind,
        expires_at=issued + ttl_s,
        device_id=device_id,
        version=None if manifest is None else manifest.version,
        fleet=fleet,
        task=task,
        sha256=None if manifest is None else manifest.sha256,
        issued_at=issued,
        issued_by=issued_by,
        manifest=manifest,
    )


class NotRemoteSettingsError(ValueError):
    """A config names a setting that is not in ``REMOTE_SETTINGS``: nothing is signed."""


def config_command(
    key: Ed25519PrivateKey,
    *,
    command_id: str,
    fleet: str,
    task: str,
    device_id: str,
    settings: dict[str, Any],
    issued_by: str,
    ttl_s: float,
    now: float | None = None,
) -> Command:
    """The device's remote settings, all of them: an empty ``settings`` returns it to its local ones."""
    unknown = sorted(set(settings) - REMOTE_SETTINGS)
    if unknown:
        raise NotRemoteSettingsError(
            f"not remote settings: {', '.join(unknown)} (one of {', '.join(sorted(REMOTE_SETTINGS))})"
        )
    issued = time.time() if now is None else now
    return _signed(
        key,
        command_id=command_id,
        kind="config",
        expires_at=issued + ttl_s,
        device_id=device_id,
        settings=settings,
        fleet=fleet,
        task=task,
        issued_at=issued,
        issued_by=issued_by,
    )


def verify_config_command(
    command: Command, trust: TrustStore, *, fleet: str, task: str, device_id: str, now: float | None = None
) -> dict[str, Any]:
    """The settings a verified ``config`` sets; ``BundleError`` (``SignatureError``) with the reason otherwise."""
    if command.kind != "config":
        raise BundleError(f"not a config command: {command.kind}")
    _verify_signed(command, trust, fleet=fleet, task=task, now=now)
    if command.device_id != device_id:
        raise BundleError(f"config command is for device {command.device_id}, this is {device_id}")
    unknown = sorted(set(command.settings) - REMOTE_SETTINGS)
    if unknown:
        raise BundleError(f"settings an operator may not set remotely: {', '.join(unknown)}")
    return dict(command.settings)


def _verify_signed(command: Command, trust: TrustStore, *, fleet: str, task: str, now: float | None) -> None:
    if command.expires_at < (time.time() if now is None else now):
        raise BundleError("command expired")
    if not command.signature:
        raise SignatureError(f"{command.kind} command is not signed")
    trust.verify(command.signer, command.signature, command_signed_fields(command))
    if command.fleet != fleet or command.task != task:
        raise BundleError(f"command is for {command.fleet}/{command.task}, this agent is {fleet}/{task}")


def _verified_manifest(command: Command, trust: TrustStore) -> ModelManifest:
    manifest = command.manifest
    if manifest is None or command.version is None or command.sha256 is None:
        raise BundleError(f"{command.kind} command lacks its version, digest or manifest")
    if (manifest.version, manifest.sha256, manifest.task) != (command.version, command.sha256, command.task):
        raise BundleError("the manifest does not name the command's version and digest")
    verify_manifest(manifest, trust)
    return manifest


def verify_rollback(
    command: Command, trust: TrustStore, *, fleet: str, task: str, now: float | None = None
) -> ModelManifest:
    """The manifest to install, or ``BundleError`` with the reason the command is refused."""
    if command.kind != "rollback":
        raise BundleError(f"not a rollback command: {command.kind}")
    _verify_signed(command, trust, fleet=fleet, task=task, now=now)
    return _verified_manifest(command, trust)


def verify_device_command(
    command: Command, trust: TrustStore, *, fleet: str, task: str, device_id: str, now: float | None = None
) -> ModelManifest | None:
    """The manifest a pin holds or an unpin returns to (None: an unpin with no release to serve).

    Raises ``BundleError`` (``SignatureError``) with the reason the command is refused.
    """
    if command.kind not in ("pin", "unpin"):
        raise BundleError(f"not a pin or unpin command: {command.kind}")
    _verify_signed(command, trust, fleet=fleet, task=task, now=now)
    if command.device_id != device_id:
        raise BundleError(f"{command.kind} command is for device {command.device_id}, this is {device_id}")
    if command.kind == "unpin" and command.manifest is None and command.version is None and command.sha256 is None:
        return None
    return _verified_manifest(command, trust)


def federation_call(
    key: Ed25519PrivateKey,
    *,
    run_id: str,
    fleet: str,
    state: Literal["open", "ended"],
    ttl_s: float,
    now: float | None = None,
) -> FederationCall:
    issued = time.time() if now is None else now
    unsigned = FederationCall(
        run_id=run_id,
        fleet=fleet,
        state=state,
        issued_at=issued,
        expires_at=issued + ttl_s,
        signer=key_id(key.public_key()),
    )
    return unsigned.model_copy(update={"signature": sign(key, call_signed_fields(unsigned))})


def call_signed_fields(call: FederationCall) -> dict[str, Any]:
    return call.model_dump(mode="json", exclude={"signature"})


def verify_federation_call(call: FederationCall, trust: TrustStore, *, fleet: str) -> None:
    """Raises ``BundleError`` (``SignatureError``) with the reason a call is refused; expiry is the caller's."""
    if not call.signature:
        raise SignatureError("federation call is not signed")
    trust.verify(call.signer, call.signature, call_signed_fields(call))
    if call.fleet != fleet:
        raise BundleError(f"federation call is for fleet {call.fleet}, this agent is in {fleet}")
