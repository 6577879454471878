"""Figure 7: distributing a 10 MiB model to 100 updaters through Mosquitto.

fedforge: the server's release publisher (``server.release.publisher.publish_release``:
retained QoS 1 chunks, acknowledged, then the signed manifest) on the server's MQTT client,
to 100 simulated agents, each the agent's real MQTT link feeding a real ``ModelUpdater``
(signature verified, chunks subscribed on the manifest, assembled, size and sha256 checked):
see benchmarks/distribution_worker.py. Timed from the first publish to the moment the last
updater holds verified bytes.

Anchor: a bare paho client publishing the same bytes in the same chunks (QoS 1, not
retained, same in-flight window) to 100 bare paho subscribers that only count chunks. Both
sides use the same number of subscriber processes and their own private Mosquitto (the
package's, configured like tests/conftest.py), so each broker's peak memory (VmHWM, reset
before every trial through /proc/<pid>/clear_refs, or polled VmRSS where that is refused)
belongs to one side.

Run: ``python -m benchmarks.bench_distribution [--quick] [--out DIR]``.
"""

from __future__ import annotations

import contextlib
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks.distribution_worker import BARE_ROOT
from benchmarks.harness import Figure, Sample, parse_args, write_result
from server.release.publisher import clear_release, publish_release
from shared.bundle import DEFAULT_CHUNK_SIZE, build_manifest, split_chunks
from shared.mqtt import BrokerAddress, MqttClient
from shared.signing import write_keypair
from shared.tasks.fraud_spec import INPUT_NAME, OUTPUT_NAME, TASK, base_feature_spec
from simulations.mosquitto import start as start_mosquitto
from simulations.mosquitto import stop_process_group

FLEET = "bench"
TIME_GOAL = "fedforge <= 2x the bare time"
MEMORY_GOAL_MB = 100.0
MIB = 1024 * 1024


@dataclass(frozen=True)
class Size:
    model_bytes: int
    updaters: int
    processes: int
    repeats: int
    chunk_size: int = DEFAULT_CHUNK_SIZE
    timeout_s: float = 300.0


FULL = Size(model_bytes=10 * MIB, updaters=100, processes=4, repeats=5)
QUICK = Size(model_bytes=1 * MIB, updaters=10, processes=2, repeats=2, timeout_s=60.0)


class Broker:
    """A private Mosquitto on a free loopback port whose memory we can read."""

    def __init__(self, workdir: Path, name: str) -> None:
        broker = start_mosquitto(workdir, name)
        self.port, self.proc, self.url = broker.port, broker.proc, broker.url
        self._poll_peak = 0
        self._polling = threading.Event()

    def _status_kb(self, field: str) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        return 0

    @contextlib.contextmanager
    def peak_rss(self) -> Iterator[list[float]]:
        """Yields a list that holds the peak RSS in MB of the block once it exits."""
        result: list[float] = []
        try:
            Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            reset = True
        except OSError:
            reset = False
        self._poll_peak = self._status_kb("VmRSS")
        self._polling.set()
        poller = threading.Thread(target=self._poll, daemon=True)
        poller.start()
        try:
            yield result
        finally:
            self._polling.clear()
            poller.join()
            peak_kb = max(self._poll_peak, self._status_kb("VmHWM") if reset else 0)
            result.append(peak_kb / 1024)

    def _poll(self) -> None:
        while self._polling.is_set():
            self._poll_peak = max(self._poll_peak, self._status_kb("VmRSS"))
            time.sleep(0.01)

    def stop(self) -> None:
        stop_process_group(self.proc)


class Workers:
    """The subscriber processes of one side; collects their ``done`` lines."""

    def __init__(self, mode: str, broker: Broker, size: Size, trusted_key: Path | None) -> None:
        self.events: queue.Queue[tuple[int, str]] = queue.Queue()
        self.procs: list[subprocess.Popen[str]] = []
        per = [
            size.updaters // size.processes + (1 if i < size.updaters % size.processes else 0)
            for i in range(size.processes)
        ]
        for i, clients in enumerate(n for n in per if n):
            argv = [sys.executable, "-m", "benchmarks.distribution_worker", mode, "--broker", broker.url]
            argv += ["--clients", str(clients), "--prefix", f"{mode}{i}", "--fleet", FLEET, "--task", TASK]
            if trusted_key is not None:
                argv += ["--trusted-key", str(trusted_key)]
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True
            )
            self.procs.append(proc)
            threading.Thread(target=self._read, args=(len(self.procs) - 1, proc), daemon=True).start()
        try:
            self._wait_all("ready", None, size.timeout_s)
        except BaseException:
            self.stop()  # the caller never gets this object: reap what was started here
            raise

    def _read(self, index: int, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.events.put((index, line.strip()))
        self.events.put((index, "exit"))

    def _wait_all(self, word: str, key: str | None, timeout: float) -> list[float]:
        pending = set(range(len(self.procs)))
        times: list[float] = []
        deadline = time.monotonic() + timeout
        while pending:
            try:
                index, line = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise SystemExit(f"{len(pending)} subscriber process(es) did not say {word} {key or ''}") from None
            parts = line.split()
            if not parts:
                continue
            if parts[0] in ("exit", "reject"):
                raise SystemExit(f"subscriber process {index}: {line}")
            if parts[0] == word and (key is None or parts[1] == key):
                pending.discard(index)
                if key is not None:
                    times.append(float(parts[2]))
        return times

    def cpu_seconds(self) -> float:
        """User + system CPU time of the subscriber processes so far (all their threads)."""
        total = 0
        for proc in self.procs:
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        return total / os.sysconf("SC_CLK_TCK")

    def wait_done(self, key: str, timeout: float) -> float:
        """``time.monotonic()`` at which the last client of every process had ``key``."""
        return max(self._wait_all("done", key, timeout))

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.close()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)
            stop_process_group(proc)


class BarePublisher:
    """Plain paho: publish every chunk at QoS 1 and wait for the broker's acknowledgements."""

    def __init__(self, broker: Broker) -> None:
        address = BrokerAddress.parse(broker.url)
        self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bare-publisher")
        self.client.max_queued_messages_set(0)
        self.client.max_inflight_messages_set(100)  # as shared.mqtt.MqttClient
        self.client.connect(address.host, address.port, keepalive=60)
        self.client.loop_start()

    def publish(self, trial: int, chunks: list[bytes]) -> None:
        infos = [
            self.client.publish(f"{BARE_ROOT}/{trial}/{len(chunks)}/{i}", chunk, qos=1)
            for i, chunk in enumerate(chunks)
        ]
        for info in infos:
            info.wait_for_publish(60.0)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__doc__ or "", argv)
    size = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="fedforge-bench-dist-") as tmp:
        return _run(size, Path(tmp), args.quick, args.out)


def _run(size: Size, workdir: Path, quick: bool, out: Path | None) -> int:
    signing_key = write_keypair(workdir / "operator.key", workdir / "operator.pub")
    model = os.urandom(size.model_bytes)
    chunks = split_chunks(model, size.chunk_size)
    spec = base_feature_spec()
    brokers: dict[str, Broker] = {}
    workers: dict[str, Workers] = {}
    publisher: MqttClient | None = None
    bare: BarePublisher | None = None
    try:
        for side in ("fedforge", "bare"):
            brokers[side] = Broker(workdir, side)
        workers["fedforge"] = Workers("fedforge", brokers["fedforge"], size, workdir / "operator.pub")
        workers["bare"] = Workers("bare", brokers["bare"], size, None)
        publisher = MqttClient(
            BrokerAddress.parse(brokers["fedforge"].url), "bench-release-publisher", persistent=False
        )
        publisher.start()
        bare = BarePublisher(brokers["bare"])
        times: dict[str, list[float]] = {"fedforge": [], "bare": []}
        peaks: dict[str, list[float]] = {"fedforge": [], "bare": []}
        publish_times: list[float] = []
        cpu: dict[str, list[float]] = {"fedforge": [], "bare": []}
        for trial in range(1, size.repeats + 2):  # the first round of each side is a warm-up
            manifest = build_manifest(
                model_bytes=model,
                task=TASK,
                version=trial,
                feature_spec=spec,
                input_name=INPUT_NAME,
                output_name=OUTPUT_NAME,
                signing_key=signing_key,
                chunk_size=size.chunk_size,
            )
            with brokers["fedforge"].peak_rss() as fed_peak:
                cpu_before = workers["fedforge"].cpu_seconds()
                start = time.monotonic()
                publish_release(publisher, FLEET, manifest, model)
                published = time.monotonic() - start
                fed_time = workers["fedforge"].wait_done(str(trial), size.timeout_s) - start
                fed_cpu = workers["fedforge"].cpu_seconds() - cpu_before
            clear_release(publisher, FLEET, TASK, trial, manifest.chunk_count)
            with brokers["bare"].peak_rss() as bare_peak:
                cpu_before = workers["bare"].cpu_seconds()
                start = time.monotonic()
                bare.publish(trial, chunks)
                bare_time = workers["bare"].wait_done(str(trial), size.timeout_s) - start
                bare_cpu = workers["bare"].cpu_seconds() - cpu_before
            if trial > 1:
                publish_times.append(published)
                cpu["fedforge"].append(fed_cpu)
                cpu["bare"].append(bare_cpu)
                times["fedforge"].append(fed_time)
                times["bare"].append(bare_time)
                peaks["fedforge"].append(fed_peak[0])
                peaks["bare"].append(bare_peak[0])
            print(
                f"trial {trial}: fedforge {fed_time:.3f} s ({fed_peak[0]:.1f} MB), "
                f"bare {bare_time:.3f} s ({bare_peak[0]:.1f} MB)"
            )
    finally:
        if publisher is not None:
            publisher.stop()
        if bare is not None:
            bare.stop()
        for subscribers in workers.values():
            subscribers.stop()
        for broker in brokers.values():
            broker.stop()
    cpu_median = {side: statistics.median(values) for side, values in cpu.items()}
    figures = _figures(size, times, peaks, statistics.median(publish_times), cpu_median)
    path = write_result("bench_distribution", figures, quick=quick, out=out)
    print(f"wrote {path}")
    return 0


def _figures(
    size: Size,
    times: dict[str, list[float]],
    peaks: dict[str, list[float]],
    publish_s: float,
    cpu: dict[str, float],
) -> list[Figure]:
    label = f"{size.model_bytes / MIB:g} MiB model to {size.updaters} updaters"
    chunks = -(-size.model_bytes // size.chunk_size)
    layout = (
        f"{chunks} chunks of {size.chunk_size // 1024} KiB, QoS 1; {size.processes} subscriber processes per side; "
        "fedforge: retained chunks then signed manifest, each updater verifies signature, size and sha256"
    )
    fed_t, bare_t = Sample(tuple(times["fedforge"]), "s"), Sample(tuple(times["bare"]), "s")
    fed_m, bare_m = Sample(tuple(peaks["fedforge"]), "MB"), Sample(tuple(peaks["bare"]), "MB")
    return [
        Figure(
            figure=f"7a distribution, {label}",
            fedforge=fed_t,
            anchor=bare_t,
            anchor_name="bare paho chunked publish to bare subscribers",
            better="lower",
            goal=TIME_GOAL,
            goal_met=fed_t.median <= 2 * bare_t.median,
            notes=(
                f"{layout}; publish_release returned after {publish_s:.2f} s (median), the rest is delivery and "
                f"verification in the subscriber processes, which used {cpu['fedforge']:.2f} s of CPU per release "
                f"(bare subscribers: {cpu['bare']:.2f} s) on {os.cpu_count()} cores"
            ),
            extra={"publish_s": publish_s, "subscriber_cpu_s": cpu["fedforge"], "bare_subscriber_cpu_s": cpu["bare"]},
        ),
        Figure(
            figure=f"7b broker peak memory, {label}",
            fedforge=fed_m,
            anchor=bare_m,
            anchor_name="the bare run's broker",
            better="lower",
            goal=f"broker peak <= {MEMORY_GOAL_MB:g} MB",
            goal_met=fed_m.high <= MEMORY_GOAL_MB,
            notes="Mosquitto VmHWM (peak RSS) during each trial, reset before it",
        ),
    ]


if __name__ == "__main__":
    sys.exit(main())
