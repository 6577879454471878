"""The model bundle: one ONNX file plus its signed manifest, split into chunks for MQTT.

Building (cloud) and verifying (edge) live side by side so that both always agree on what
is signed. ``ChunkAssembler`` is the pure core of the download: it takes chunks in any order,
any number of times (QoS 1 redelivers), and says which ranges are still missing.
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.errors import BundleError, PayloadError
from shared.features import FeatureSpec
from shared.schemas import ModelManifest, decode
from shared.signing import TrustStore, key_id, sign

DEFAULT_CHUNK_SIZE = 256 * 1024
# An agent refuses manifests announcing more than this; it bounds its download memory.
MAX_MODEL_BYTES = 512 * 1024 * 1024


def signed_fields(manifest: ModelManifest) -> dict[str, Any]:
    """The manifest content covered by the signature: everything but the signature."""
    return manifest.model_dump(mode="json", exclude={"signature"})


def build_manifest(
    *,
    model_bytes: bytes,
    task: str,
    version: int,
    feature_spec: FeatureSpec,
    input_name: str,
    output_name: str,
    signing_key: Ed25519PrivateKey,
    parent_version: int | None = None,
    training_run_id: str | None = None,
    metrics: dict[str, float] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    created: float | None = None,
) -> ModelManifest:
    unsigned = ModelManifest(
        task=task,
        version=version,
        parent_version=parent_version,
        created=time.time() if created is None else created,
        training_run_id=training_run_id,
        metrics={k: float(v) for k, v in (metrics or {}).items() if math.isfinite(v)},
        feature_spec=feature_spec,
        input_name=input_name,
        output_name=output_name,
        size=len(model_bytes),
        sha256=hashlib.sha256(model_bytes).hexdigest(),
        chunk_size=chunk_size,
        chunk_count=max(1, math.ceil(len(model_bytes) / chunk_size)),
        signer=key_id(signing_key.public_key()),
    )
    return unsigned.model_copy(update={"signature": sign(signing_key, signed_fields(unsigned))})


def parse_manifest(payload: bytes) -> ModelManifest:
    try:
        return decode(ModelManifest, payload)
    except PayloadError as exc:
        raise BundleError(f"malformed manifest: {exc}") from None


def verify_manifest(manifest: ModelManifest, trust: TrustStore) -> None:
    """Signature and internal consistency; raises ``BundleError`` with the reason."""
    if not manifest.signature:
        raise BundleError("manifest is not signed")
    trust.verify(manifest.signer, manifest.signature, signed_fields(manifest))
    if manifest.size > MAX_MODEL_BYTES:
        raise BundleError(f"model too large: {manifest.size} bytes")
    expected = max(1, math.ceil(manifest.size / manifest.chunk_size))
    if manifest.chunk_count != expected:
        raise BundleError(f"chunk_count {manifest.chunk_count} does not match size/chunk_size ({expected})")


def verify_model_bytes(manifest: ModelManifest, model_bytes: bytes) -> None:
    if len(model_bytes) != manifest.size:
        raise BundleError(f"size mismatch: got {len(model_bytes)} bytes, manifest says {manifest.size}")
    digest = hashlib.sha256(model_bytes).hexdigest()
    if digest != manifest.sha256:
        raise BundleError(f"sha256 mismatch: got {digest[:16]}..., manifest says {manifest.sha256[:16]}...")


def split_chunks(model_bytes: bytes, chunk_size: int) -> list[bytes]:
    return [model_bytes[i : i + chunk_size] for i in range(0, len(model_bytes), chunk_size)] or [b""]


class ChunkAssembler:
    """Collects the chunks of one manifest; idempotent, order-independent."""

    def __init__(self, manifest: ModelManifest) -> None:
        self.manifest = manifest
        self._chunks: dict[int, bytes] = {}

    def add(self, index: int, data: bytes) -> None:
        m = self.manifest
        if not 0 <= index < m.chunk_count:
            raise BundleError(f"chunk index {index} out of range 0..{m.chunk_count - 1}")
        last = index == m.chunk_count - 1
        expected = m.size - m.chunk_size * (m.chunk_count - 1) if last else m.chunk_size
        if len(data) != expected:
            raise BundleError(f"chunk {index} has {len(data)} bytes, expected {expected}")
        self._chunks[index] = data

    @property
    def complete(self) -> bool:
        return len(self._chunks) == self.manifest.chunk_count

    def received(self) -> int:
        return len(self._chunks)

    def missing_ranges(self) -> list[tuple[int, int]]:
        """Missing chunk indices as inclusive ranges, for a resume request."""
        out: list[tuple[int, int]] = []
        start: int | None = None
        for i in range(self.manifest.chunk_count):
            if i not in self._chunks:
                if start is None:
                    start = i
            elif start is not None:
                out.append((start, i - 1))
                start = None
        if start is not None:
            out.append((start, self.manifest.chunk_count - 1))
        return out

    def assemble(self) -> bytes:
        if not self.complete:
            raise BundleError(f"incomplete: {self.received()} of {self.manifest.chunk_count} chunks")
        data = b"".join(self._chunks[i] for i in range(self.manifest.chunk_count))
        verify_model_bytes(self.manifest, data)
        return data
