"""Which devices may join the federation: Flower node-key registration, with an audit trail.

With ``supernode_auth`` the SuperLink refuses every SuperNode whose public key was not
registered through its Control API (``flwr supernode register``); the node id Flower hands
out at registration is then the device's id for good, across SuperNode restarts. The key
is an EC key on a NIST curve in OpenSSH format (flwr 1.42: ``cli/supernode/register.py``
``try_load_public_key``), which the agent creates on its first start. Unregistration takes
the node id (Flower's Control API has no unregister-by-key); the id of a key registered here
is found again in the registry's audit log.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from server.config import ServerSettings
from server.errors import ServerError
from server.federation.flower import CONNECTION, _flwr, _json_tail, write_connection_config
from server.registry.records import Registry

log = logging.getLogger(__name__)

ACTION_REGISTER = "device.register"
ACTION_UNREGISTER = "device.unregister"
# How far back the audit log is searched for a key's node id.
AUDIT_SEARCH_LIMIT = 100_000


class NodeAuthError(ServerError):
    """A device key could not be registered or unregistered."""


def key_fingerprint(public_key_path: Path) -> str:
    """``SHA256:…`` of the OpenSSH key blob, as ``ssh-keygen -l`` prints it; refuses keys Flower refuses."""
    try:
        text = public_key_path.read_bytes()
    except OSError as exc:
        raise NodeAuthError(f"public key {public_key_path} cannot be read: {exc.strerror or exc}") from None
    try:
        key = serialization.load_ssh_public_key(text)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise NodeAuthError(f"{public_key_path} is not an OpenSSH public key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise NodeAuthError(f"{public_key_path}: Flower needs an EC key on a NIST curve, not {type(key).__name__}")
    blob = base64.b64decode(
        key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).split()[1]
    )
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _require_auth(settings: ServerSettings) -> None:
    if not settings.supernode_auth:
        raise NodeAuthError("supernode_auth is off: the SuperLink accepts any SuperNode, there is nothing to register")


def register_device(
    settings: ServerSettings, registry: Registry, public_key: Path, *, name: str | None = None, actor: str = "cli"
) -> str:
    """Register a device's public key with the running SuperLink; returns the node id Flower assigned."""
    _require_auth(settings)
    fingerprint = key_fingerprint(public_key)
    write_connection_config(settings)
    args = ["supernode", "register", str(public_key.resolve()), CONNECTION, "--format", "json"]
    if name:
        args += ["--name", name]
    out = _json_tail(_flwr(settings, *args, timeout=120))
    if not out.get("success") or "node-id" not in out:
        raise NodeAuthError(f"the SuperLink did not register {public_key}: {out.get('error-message', out)}")
    node_id = str(out["node-id"])
    registry.audit(
        actor, ACTION_REGISTER, {"node_id": node_id, "fingerprint": fingerprint, "name": name, "key": str(public_key)}
    )
    log.info("registered device key %s (%s) as node %s", public_key, fingerprint, node_id)
    return node_id


def node_id_of_key(registry: Registry, public_key: Path) -> str:
    """The node id under which this key is registered, from the newest audit entry that names it."""
    fingerprint = key_fingerprint(public_key)
    for entry in registry.list_audit(AUDIT_SEARCH_LIMIT):
        if entry.action in (ACTION_REGISTER, ACTION_UNREGISTER) and entry.detail.get("fingerprint") == fingerprint:
            if entry.action == ACTION_UNREGISTER:
                break
            return str(entry.detail["node_id"])
    raise NodeAuthError(f"no registration of {public_key} ({fingerprint}) in the audit log: pass the node id instead")


def unregister_device(
    settings: ServerSettings, registry: Registry, node_id: str, *, fingerprint: str | None = None, actor: str = "cli"
) -> None:
    """Remove a node from the federation: its key is refused from now on."""
    _require_auth(settings)
    if not node_id.isdigit():
        raise NodeAuthError(f"a Flower node id is an unsigned integer, not {node_id!r}")
    write_connection_config(settings)
    out = _json_tail(_flwr(settings, "supernode", "unregister", node_id, CONNECTION, "--format", "json", timeout=120))
    if not out.get("success"):
        raise NodeAuthError(f"the SuperLink did not unregister node {node_id}: {out.get('error-message', out)}")
    registry.audit(actor, ACTION_UNREGISTER, {"node_id": node_id, "fingerprint": fingerprint})
    log.info("unregistered node %s", node_id)
