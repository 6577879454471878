"""Edge-agent test helpers: a small fitted FeatureSpec, ONNX models exported from FraudMLP,
operator keys, and signed bundles ready to publish."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.bundle import build_manifest, split_chunks
from shared.features import FeatureSpec
from shared.schemas import ModelManifest
from shared.signing import write_keypair
from shared.tasks.fraud import INPUT_NAME, OUTPUT_NAME, FraudMLP, ScoringHead
from tests.edge_agent.agent_testlib import BOUNDS, NAMES


def make_spec() -> FeatureSpec:
    rng = np.random.default_rng(0)
    raw = np.column_stack([rng.normal(size=(500, 3)), rng.uniform(0, 500, size=500)])
    base = FeatureSpec.from_names("fraud", NAMES, BOUNDS, transforms={"amount": "log1p"})
    return base.fit(raw)


def export_onnx(width: int, seed: int = 0) -> bytes:
    """A FraudMLP exported the way the cloud exports it (probabilities, shape (n, 1))."""
    torch.manual_seed(seed)
    model = FraudMLP(width=width).eval()
    buffer = io.BytesIO()
    torch.onnx.export(
        ScoringHead(model),
        (torch.zeros(2, width),),
        buffer,  # type: ignore[arg-type]  # a file-like object works; the stub says paths only
        dynamo=False,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "n"}, OUTPUT_NAME: {0: "n"}},
    )
    return buffer.getvalue()


@dataclass
class Keys:
    private: Ed25519PrivateKey
    public_path: Path


@dataclass
class Bundle:
    manifest: ModelManifest
    model_bytes: bytes
    chunks: list[bytes]

    @property
    def manifest_bytes(self) -> bytes:
        return self.manifest.to_bytes()


@pytest.fixture(scope="session")
def spec() -> FeatureSpec:
    return make_spec()


@pytest.fixture(scope="session")
def onnx_bytes(spec: FeatureSpec) -> bytes:
    return export_onnx(spec.width)


@pytest.fixture(scope="session")
def operator_keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    d = tmp_path_factory.mktemp("keys")
    key = write_keypair(d / "op.key", d / "op.pub")
    return Keys(key, d / "op.pub")


@pytest.fixture(scope="session")
def rogue_keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    d = tmp_path_factory.mktemp("rogue")
    key = write_keypair(d / "rogue.key", d / "rogue.pub")
    return Keys(key, d / "rogue.pub")


def fraud_manifest(
    data: bytes, version: int, spec: FeatureSpec, key: Ed25519PrivateKey, **fields: Any
) -> ModelManifest:
    """The signed manifest of a fraud model's ONNX bytes, as the cloud's release code makes it."""
    return build_manifest(
        model_bytes=data,
        task="fraud",
        version=version,
        feature_spec=spec,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        signing_key=key,
        **fields,
    )


@pytest.fixture(scope="session")
def make_bundle(spec: FeatureSpec, operator_keys: Keys) -> Callable[..., Bundle]:
    def _make(
        version: int,
        *,
        model_bytes: bytes | None = None,
        key: Ed25519PrivateKey | None = None,
        chunk_size: int = 1024,
        seed: int = 0,
    ) -> Bundle:
        data = model_bytes if model_bytes is not None else export_onnx(spec.width, seed=seed)
        manifest = fraud_manifest(data, version, spec, key or operator_keys.private, chunk_size=chunk_size)
        return Bundle(manifest, data, split_chunks(data, chunk_size))

    return _make
