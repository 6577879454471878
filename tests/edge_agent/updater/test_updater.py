"""The updater state machine against real signed bundles: good, tampered, untrusted, short."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_agent.updater import Complete, Ignore, ModelFiles, ModelUpdater, Pin, Reject, RequestChunks, StartDownload
from shared import topics
from shared.errors import BundleError
from shared.signing import TrustStore
from tests.edge_agent.conftest import Bundle, Keys


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def updater(operator_keys: Keys, clock: Clock) -> ModelUpdater:
    return ModelUpdater("f1", "fraud", TrustStore.from_files([operator_keys.public_path]), timeout_s=60, clock=clock)


def feed(updater: ModelUpdater, bundle: Bundle, order: list[int] | None = None) -> list[object]:
    start = updater.on_manifest(bundle.manifest_bytes)
    assert isinstance(start, StartDownload), start
    assert start.subscribe == topics.chunks_filter("f1", "fraud", bundle.manifest.version)
    idx = order if order is not None else list(range(len(bundle.chunks)))
    return [updater.on_chunk(bundle.manifest.version, i, bundle.chunks[i]) for i in idx]


def test_good_bundle_completes(updater: ModelUpdater, make_bundle: Callable[..., Bundle]) -> None:
    bundle = make_bundle(1)
    assert len(bundle.chunks) > 3
    actions = feed(updater, bundle)
    assert all(isinstance(a, Ignore) for a in actions[:-1])
    done = actions[-1]
    assert isinstance(done, Complete)
    assert done.model_bytes == bundle.model_bytes
    updater.installed(1)
    assert isinstance(updater.on_manifest(bundle.manifest_bytes), Ignore)  # same version again


def test_out_of_order_and_duplicated_chunks(updater: ModelUpdater, make_bundle: Callable[..., Bundle]) -> None:
    bundle = make_bundle(2)
    order = list(range(len(bundle.chunks)))
    random.Random(3).shuffle(order)
    order = order[:2] + order[:2] + order[2:]  # QoS 1 redelivery
    actions = feed(updater, bundle, order)
    done = actions[-1]
    assert isinstance(done, Complete)
    assert done.model_bytes == bundle.model_bytes
    assert sum(isinstance(a, Complete) for a in actions) == 1


def test_flipped_byte_rejected(updater: ModelUpdater, make_bundle: Callable[..., Bundle]) -> None:
    bundle = make_bundle(3)
    chunk = bytearray(bundle.chunks[1])
    chunk[10] ^= 0xFF
    bundle.chunks[1] = bytes(chunk)
    last = feed(updater, bundle)[-1]
    assert isinstance(last, Reject)
    assert "sha256 mismatch" in last.reason
    assert last.unsubscribe == topics.chunks_filter("f1", "fraud", 3)
    assert isinstance(updater.on_manifest(bundle.manifest_bytes), Ignore)  # not retried


def test_unknown_signer_rejected(updater: ModelUpdater, make_bundle: Callable[..., Bundle], rogue_keys: Keys) -> None:
    bundle = make_bundle(4, key=rogue_keys.private)
    action = updater.on_manifest(bundle.manifest_bytes)
    assert isinstance(action, Reject)
    assert "not a trusted operator key" in action.reason
    assert updater.downloading is None


def test_tampered_manifest_rejected(updater: ModelUpdater, make_bundle: Callable[..., Bundle]) -> None:
    bundle = make_bundle(4)
    forged = bundle.manifest.model_copy(update={"version": 5})
    action = updater.on_manifest(forged.to_bytes())
    assert isinstance(action, Reject)
    assert "signature does not match" in action.reason


def test_truncated_bundle_rejected(updater: ModelUpdater, make_bundle: Callable[..., Bundle]) -> None:
    bundle = make_bundle(5)
    bundle.chunks[-1] = bundle.chunks[-1][:-7]
    last = feed(updater, bundle)[-1]
    assert isinstance(last, Reject)
    assert "bytes, expected" in last.reason


def test_missing_chunks_time_out_then_retry(
    updater: ModelUpdater, make_bundle: Callable[..., Bundle], clock: Clock
) -> None:
    bundle = make_bundle(6)
    feed(updater, bundle, order=[0, 1])
    assert updater.tick() is None
    clock.now = 61.0
    rejection = updater.tick()
    assert rejection is not None
    assert "timed out" in rejection.reason
    assert updater.downloading is None
    # the manifest is delivered again (e.g. after a reconnect): the download restarts
    actions = feed(updater, bundle)
    assert isinstance(actions[-1], Complete)


def test_garbage_and_foreign_manifests(updater: ModelUpdater, make_bundle: Callable[..., Bundle]) -> None:
    assert isinstance(updater.on_manifest(b"{nope"), Reject)
    foreign = make_bundle(7).manifest.model_copy(update={"task": "sensor-anomaly"})
    assert isinstance(updater.on_manifest(foreign.to_bytes()), Reject)
    assert isinstance(updater.on_chunk(7, 0, b"x"), Ignore)  # stray chunk, no download


def test_older_version_ignored(updater: ModelUpdater, make_bundle: Callable[..., Bundle]) -> None:
    updater.installed(5)
    assert isinstance(updater.on_manifest(make_bundle(4).manifest_bytes), Ignore)


def test_newer_manifest_replaces_download(updater: ModelUpdater, make_bundle: Callable[..., Bundle]) -> None:
    feed(updater, make_bundle(8), order=[0])
    action = updater.on_manifest(make_bundle(9).manifest_bytes)
    assert isinstance(action, StartDownload)
    assert action.unsubscribe == topics.chunks_filter("f1", "fraud", 8)


def test_model_files_roundtrip_and_reverify(
    tmp_path: Path, make_bundle: Callable[..., Bundle], operator_keys: Keys
) -> None:
    files = ModelFiles(tmp_path / "models")
    trust = TrustStore.from_files([operator_keys.public_path])
    with pytest.raises(BundleError):
        files.load_current(trust)
    bundle = make_bundle(3)
    files.save(bundle.manifest, bundle.model_bytes)
    stored = files.load_current(trust)
    assert stored.manifest == bundle.manifest
    assert stored.model_bytes == bundle.model_bytes
    path = files.model_path(3)
    data = bytearray(path.read_bytes())
    data[5] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        files.load_current(trust)


def test_stalled_download_asks_for_missing_chunks_before_giving_up(
    updater: ModelUpdater, make_bundle: Callable[..., Bundle], clock: Clock
) -> None:
    bundle = make_bundle(8)
    feed(updater, bundle, order=[0, 1, 4])
    clock.now = 10.0
    assert updater.tick() is None  # not stalled long enough (resume after 15 s by default)
    clock.now = 16.0
    request = updater.tick()
    assert isinstance(request, RequestChunks)
    assert request.version == bundle.manifest.version
    assert request.missing == ((2, 3), (5, len(bundle.chunks) - 1))
    clock.now = 20.0
    assert updater.tick() is None  # asked recently: no request storm
    clock.now = 32.0
    assert isinstance(updater.tick(), RequestChunks)
    for i in (2, 3, 5):
        updater.on_chunk(bundle.manifest.version, i, bundle.chunks[i])
    clock.now = 40.0
    assert updater.tick() is None  # progress resets the clock
    last = [updater.on_chunk(bundle.manifest.version, i, bundle.chunks[i]) for i in range(6, len(bundle.chunks))][-1]
    assert isinstance(last, Complete)


def test_authorised_download_goes_past_anti_downgrade(
    updater: ModelUpdater, make_bundle: Callable[..., Bundle]
) -> None:
    old = make_bundle(1, seed=1)
    updater.installed(3)
    assert isinstance(updater.on_manifest(old.manifest_bytes), Ignore)  # anti-downgrade by manifest
    start = updater.start_authorised(old.manifest)
    assert isinstance(start, StartDownload)
    actions = [updater.on_chunk(1, i, c) for i, c in enumerate(old.chunks)]
    assert isinstance(actions[-1], Complete)


def test_authorised_download_still_verifies(
    updater: ModelUpdater, make_bundle: Callable[..., Bundle], rogue_keys: Keys
) -> None:
    forged = make_bundle(1, key=rogue_keys.private)
    action = updater.start_authorised(forged.manifest)
    assert isinstance(action, Reject)
    assert "not a trusted operator key" in action.reason


def test_after_a_rollback_withdrawn_versions_are_refused_by_manifest(
    updater: ModelUpdater, make_bundle: Callable[..., Bundle]
) -> None:
    updater.installed(3)
    updater.rolled_back(3, 1)
    assert (updater.current_version, updater.floor) == (1, 3)
    for version in (2, 3):
        action = updater.on_manifest(make_bundle(version).manifest_bytes)
        assert isinstance(action, Ignore)
    assert "withdrawn" in updater.on_manifest(make_bundle(3).manifest_bytes).reason  # type: ignore[union-attr]
    assert isinstance(updater.on_manifest(make_bundle(4).manifest_bytes), StartDownload)  # a new release is fine


def test_rollback_floor_and_kept_versions_on_disk(
    tmp_path: Path, make_bundle: Callable[..., Bundle], operator_keys: Keys
) -> None:
    files = ModelFiles(tmp_path / "models")
    trust = TrustStore.from_files([operator_keys.public_path])
    one, two = make_bundle(1, seed=1), make_bundle(2, seed=2)
    files.save(one.manifest, one.model_bytes)
    files.save(two.manifest, two.model_bytes)
    assert files.has_version(1)
    assert files.load_version(1, trust).model_bytes == one.model_bytes
    assert files.current_version() == 2
    assert files.floor() is None
    files.save_floor(2)
    assert ModelFiles(tmp_path / "models").floor() == 2
    files.model_path(1).write_bytes(b"tampered")
    with pytest.raises(BundleError):
        files.load_version(1, trust)


def test_a_pinned_updater_installs_no_other_version_by_manifest(
    updater: ModelUpdater, make_bundle: Callable[..., Bundle]
) -> None:
    updater.installed(1)
    newer = make_bundle(3)
    start = updater.on_manifest(newer.manifest_bytes)
    assert isinstance(start, StartDownload)
    # Pinned mid-download: the download of another version ends, its chunks unsubscribed.
    assert updater.pin(1) == start.subscribe
    assert updater.downloading is None
    held = updater.on_manifest(newer.manifest_bytes)
    assert isinstance(held, Ignore)
    assert "pinned to v1" in held.reason
    assert isinstance(updater.on_chunk(3, 0, newer.chunks[0]), Ignore)
    # The pinned version itself may still come by command, and releases follow once unpinned.
    assert updater.pin(None) is None
    assert isinstance(updater.on_manifest(newer.manifest_bytes), StartDownload)


def test_pinning_keeps_a_download_of_the_pinned_version(
    updater: ModelUpdater, make_bundle: Callable[..., Bundle]
) -> None:
    bundle = make_bundle(2)
    assert isinstance(updater.on_manifest(bundle.manifest_bytes), StartDownload)
    assert updater.pin(2) is None
    assert updater.downloading == 2


def test_a_superseded_commands_download_ends_and_its_chunks_install_nothing(
    updater: ModelUpdater, make_bundle: Callable[..., Bundle]
) -> None:
    updater.installed(2)
    older = make_bundle(1)
    start = updater.start_authorised(older.manifest)  # a pin or rollback asked for v1
    assert isinstance(start, StartDownload)
    assert updater.end_download(2) is None  # not the version downloading: nothing ends
    assert updater.downloading == 1
    assert updater.end_download(None) is None
    assert updater.end_download(1) == start.subscribe
    assert updater.downloading is None
    assert all(isinstance(updater.on_chunk(1, i, chunk), Ignore) for i, chunk in enumerate(older.chunks))
    assert updater.current_version == 2


def test_the_pin_survives_restarts_and_an_unreadable_pin_is_no_pin(tmp_path: Path) -> None:
    files = ModelFiles(tmp_path / "models")
    assert files.pin() is None
    files.save_pin(Pin(3, "pin-1", 1000.5))
    assert ModelFiles(tmp_path / "models").pin() == Pin(3, "pin-1", 1000.5)
    files.save_pin(Pin(None, "unpin-2", 1001.0))
    assert files.pin() == Pin(None, "unpin-2", 1001.0)
    for garbage in (b"{", b"[]", b'{"version": "3", "command_id": "x", "issued_at": 1}', b'{"version": true}'):
        (tmp_path / "models" / "pin.json").write_bytes(garbage)
        assert files.pin() is None


def test_a_resume_request_names_no_more_ranges_than_the_wire_allows(
    operator_keys: Keys, make_bundle: Callable[..., Bundle], clock: Clock
) -> None:
    # Every other chunk of a 2 * MAX_MISSING_RANGES + 2 chunk model arrives: one range more
    # than a ChunkRequest may carry is missing.
    from shared.schemas import MAX_MISSING_RANGES, ChunkRequest

    bundle = make_bundle(5, model_bytes=bytes((2 * MAX_MISSING_RANGES + 2) * 1024), chunk_size=1024)
    updater = ModelUpdater("f1", "fraud", TrustStore.from_files([operator_keys.public_path]), timeout_s=60, clock=clock)
    assert isinstance(updater.on_manifest(bundle.manifest_bytes), StartDownload)
    for i in range(0, len(bundle.chunks), 2):
        updater.on_chunk(5, i, bundle.chunks[i])
    assert len(updater.missing_ranges()) == MAX_MISSING_RANGES + 1
    clock.now += 20
    request = updater.tick()
    assert isinstance(request, RequestChunks)
    ChunkRequest(device_id="d", task="fraud", version=5, missing=request.missing)  # valid on the wire
    assert request.missing[0] == (1, 1)


def test_forged_manifests_are_remembered_in_bounded_memory(
    updater: ModelUpdater, make_bundle: Callable[..., Bundle], rogue_keys: Keys
) -> None:
    from edge_agent.updater.core import MAX_REMEMBERED_REJECTIONS

    first = make_bundle(1, key=rogue_keys.private)
    assert isinstance(updater.on_manifest(first.manifest_bytes), Reject)
    assert isinstance(updater.on_manifest(first.manifest_bytes), Ignore)  # remembered
    for version in range(2, MAX_REMEMBERED_REJECTIONS + 3):
        forged = first.manifest.model_copy(update={"version": version})
        assert isinstance(updater.on_manifest(forged.to_bytes()), Reject)
    # The oldest was forgotten: it is verified again, and refused again.
    again = updater.on_manifest(first.manifest_bytes)
    assert isinstance(again, Reject)
    assert "not a trusted operator key" in again.reason
