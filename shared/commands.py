"""Signed fleet commands: the operator key authorises what the anti-downgrade rule forbids.

A rollback command names fleet, task, version and sha256 and is signed (Ed25519, canonical
JSON) with the same operator key as manifests, so an agent trusts it exactly as far as it
trusts releases. The manifest riding along is verified separately (its own signature) and
must name the same version and digest.

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


def command_signed_fields(command: Command) -> dict[str, Any]:
    """Everything but the signature and the manifest (which carries its own)."""
    return command.model_dump(mode="json", exclude={"signature", "manifest"})


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
    unsigned = Command(
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
        signer=key_id(key.public_key()),
    )
    return unsigned.model_copy(update={"signature": sign(key, command_signed_fields(unsigned))})


def verify_rollback(
    command: Command, trust: TrustStore, *, fleet: str, task: str, now: float | None = None
) -> ModelManifest:
    """The manifest to install, or ``BundleError`` with the reason the command is refused."""
    if command.kind != "rollback":
        raise BundleError(f"not a rollback command: {command.kind}")
    if command.expires_at < (time.time() if now is None else now):
        raise BundleError("command expired")
    if not command.signature:
        raise SignatureError("rollback command is not signed")
    trust.verify(command.signer, command.signature, command_signed_fields(command))
    if command.fleet != fleet or command.task != task:
        raise BundleError(f"command is for {command.fleet}/{command.task}, this agent is {fleet}/{task}")
    manifest = command.manifest
    if manifest is None or command.version is None or command.sha256 is None:
        raise BundleError("rollback command lacks its version, digest or manifest")
    if (manifest.version, manifest.sha256, manifest.task) != (command.version, command.sha256, command.task):
        raise BundleError("the manifest does not name the command's version and digest")
    verify_manifest(manifest, trust)
    return manifest


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
