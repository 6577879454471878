"""``release_model``: the one path from a trained torch model to a published, signed release.

export -> parity check -> sign -> register (published) -> publish -> audit. Each step
either completes or raises before the next, so the fleet never sees a model whose export
was not checked, and the registry never lists a version that was not signed.
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server.registry.records import ModelVersionRecord, Registry
from server.release.export import check_onnx_matches_torch, export_onnx
from server.release.publisher import clear_fleet_command, clear_release, publish_release
from shared.bundle import DEFAULT_CHUNK_SIZE, build_manifest, signed_fields
from shared.features import FeatureSpec
from shared.mqtt import MqttClient
from shared.schemas import ModelManifest
from shared.signing import sign
from shared.tasks.fraud import INPUT_NAME, OUTPUT_NAME, TASK, FraudMLP

log = logging.getLogger(__name__)

ACTOR = "server"


def manifest_record(manifest: ModelManifest, stage: str = "published") -> ModelVersionRecord:
    return ModelVersionRecord(
        task=manifest.task,
        version=manifest.version,
        parent_version=manifest.parent_version,
        training_run_id=manifest.training_run_id,
        created=manifest.created,
        metrics=dict(manifest.metrics),
        sha256=manifest.sha256,
        size=manifest.size,
        signer=manifest.signer,
        signature=manifest.signature,
        manifest=manifest.model_dump(mode="json"),
        stage="published" if stage == "published" else "candidate",
    )


def artifact_url(base_url: str | None, version: int) -> str | None:
    return None if base_url is None else f"{base_url.rstrip('/')}/api/models/{version}/artifact"


def release_model(
    registry: Registry,
    mqtt_client: MqttClient | None,
    signing_key: Ed25519PrivateKey,
    model: FraudMLP,
    feature_spec: FeatureSpec,
    metrics: dict[str, float],
    parent_version: int | None,
    training_run_id: str | None,
    x_holdout: npt.NDArray[np.float32],
    *,
    fleet: str = "default",
    task: str = TASK,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    public_url: str | None = None,
    clear_previous: bool = True,
) -> ModelManifest:
    """Release ``model`` as the next version of ``task``; ``mqtt_client=None`` only registers it.

    ``x_holdout`` holds model inputs (already transformed by ``feature_spec``).
    """
    model_bytes = export_onnx(model)
    max_diff = check_onnx_matches_torch(model_bytes, model, x_holdout)
    previous = registry.latest_published(task)
    version = registry.next_version(task)
    manifest = build_manifest(
        model_bytes=model_bytes,
        task=task,
        version=version,
        feature_spec=feature_spec,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        signing_key=signing_key,
        parent_version=parent_version,
        training_run_id=training_run_id,
        metrics=metrics,
        chunk_size=chunk_size,
    )
    url = artifact_url(public_url, version)
    if url is not None:
        manifest = _with_url(manifest, url, signing_key)
    registry.add_model_version(manifest_record(manifest), model_bytes)
    if mqtt_client is not None:
        publish_release(mqtt_client, fleet, manifest, model_bytes)
        clear_fleet_command(mqtt_client, fleet)
        if clear_previous and previous is not None and previous.version != version:
            old_count = int(previous.manifest.get("chunk_count", 0))
            clear_release(mqtt_client, fleet, task, previous.version, old_count)
    registry.audit(
        ACTOR,
        "model.published",
        {
            "task": task,
            "version": version,
            "parent_version": parent_version,
            "training_run_id": training_run_id,
            "sha256": manifest.sha256,
            "signer": manifest.signer,
            "onnx_max_abs_diff": max_diff,
            "broadcast": mqtt_client is not None,
        },
    )
    log.info("released %s v%d (parent %s, sha256 %s...)", task, version, parent_version, manifest.sha256[:12])
    return manifest


def _with_url(manifest: ModelManifest, url: str, signing_key: Ed25519PrivateKey) -> ModelManifest:
    """The URL is signed content: set it, then sign again."""
    unsigned = manifest.model_copy(update={"url": url, "signature": ""})
    return unsigned.model_copy(update={"signature": sign(signing_key, signed_fields(unsigned))})


def republish_latest(registry: Registry, mqtt_client: MqttClient, fleet: str, task: str = TASK) -> ModelManifest | None:
    """Put the latest published version back on the broker (e.g. after a broker without persistence restarted)."""
    record = registry.latest_published(task)
    if record is None:
        return None
    artifact = registry.get_artifact(task, record.version)
    if artifact is None:
        return None
    manifest = ModelManifest.model_validate(record.manifest)
    publish_release(mqtt_client, fleet, manifest, artifact)
    return manifest
