"""Ed25519 signing over canonical JSON.

Canonical JSON (sorted keys, no whitespace, UTF-8) makes the signed bytes independent of
how a manifest was serialized on the wire, so any re-encoding keeps the signature valid
while any change of content breaks it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.errors import SignatureError
from shared.fileio import atomic_write_bytes


def canonical_json(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def public_key_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    """Short stable identifier of a public key (first 16 hex digits of its SHA-256)."""
    return hashlib.sha256(public_key_bytes(key)).hexdigest()[:16]


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def write_keypair(private_path: Path, public_path: Path) -> Ed25519PrivateKey:
    """Create a key pair; the private key file is 0600 from its first byte, and written atomically."""
    key = generate_private_key()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    atomic_write_bytes(private_path, private_pem, mode=0o600)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    atomic_write_bytes(public_path, public_pem)
    return key


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except ValueError as exc:
        raise SignatureError(f"{path} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path} is not an Ed25519 public key")
    return key


def sign(key: Ed25519PrivateKey, payload: Mapping[str, Any]) -> str:
    return base64.b64encode(key.sign(canonical_json(payload))).decode("ascii")


class TrustStore:
    """The operator public keys an agent trusts, by key id."""

    def __init__(self, keys: Iterable[Ed25519PublicKey]) -> None:
        self._keys = {key_id(k): k for k in keys}

    @classmethod
    def from_files(cls, paths: Iterable[Path]) -> TrustStore:
        return cls(load_public_key(p) for p in paths)

    def __len__(self) -> int:
        return len(self._keys)

    def verify(self, signer: str, signature_b64: str, payload: Mapping[str, Any]) -> None:
        key = self._keys.get(signer)
        if key is None:
            raise SignatureError(f"signer {signer!r} is not a trusted operator key")
        try:
            signature = base64.b64decode(signature_b64, validate=True)
        except ValueError:
            raise SignatureError("signature is not valid base64") from None
        try:
            message = canonical_json(payload)
        except ValueError as exc:  # NaN, Infinity or a lone surrogate: nothing a key ever signed
            raise SignatureError(f"the signed fields are not canonical JSON: {exc}") from None
        try:
            key.verify(signature, message)
        except InvalidSignature:
            raise SignatureError("signature does not match the manifest") from None
