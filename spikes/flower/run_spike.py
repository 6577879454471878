#!/usr/bin/env python3
"""Flower 1.42 deployment spike on loopback: 1 SuperLink + N SuperNodes + `flwr run`.

Usage:  /work/main/.venv/bin/python spikes/flower/run_spike.py [--rounds 2] [--nodes 2]
        [--fail-on d2] [--stream] [--keep-workdir]

Exit code 0 iff the run ends in status "finished:completed" and the ServerApp's
result file shows it read run_config and the ClientApps saw their node_config.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
APP_DIR = HERE / "app"  # the FAB dir: only pyproject.toml
EXT_PKG = HERE / "extpkg"  # the components' code, NOT inside the FAB; on PYTHONPATH
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"port {port} not listening after {timeout}s")


# ---------------------------------------------------------------- process tidiness
def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    return kids


def descendants(root: int) -> set[int]:
    kids, out, todo = _children_map(), set(), [root]
    while todo:
        for c in kids.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def kill_tree(procs: list[subprocess.Popen], grace: float = 5.0) -> list[int]:
    """SIGTERM then SIGKILL every started process, its process group and all
    descendants (the SuperLink starts its flower-superexec with start_new_session=True,
    so that one is in a different process group)."""
    pids: set[int] = set()
    for p in procs:
        pids.add(p.pid)
        pids |= descendants(p.pid)
    pgids = set()
    for pid in pids:
        try:
            pgids.add(os.getpgid(pid))
        except ProcessLookupError:
            pass
    pgids.discard(os.getpgid(0))  # never our own group
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pg in pgids:
            try:
                os.killpg(pg, sig)
            except ProcessLookupError:
                pass
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        end = time.time() + (grace if sig == signal.SIGTERM else 2)
        for p in procs:
            try:
                p.wait(timeout=max(0.0, end - time.time()))
            except subprocess.TimeoutExpired:
                pass
        while time.time() < end and any(os.path.exists(f"/proc/{x}") and not _zombie(x) for x in pids):
            time.sleep(0.1)
    return sorted(x for x in pids if os.path.exists(f"/proc/{x}") and not _zombie(x))


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


# ---------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--fail-on", default="")
    ap.add_argument("--stream", action="store_true", help="also try `flwr run --stream`")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--keep-workdir", action="store_true")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="flwr-spike-"))
    flwr_home = work / "flwr_home"
    flwr_home.mkdir()
    link_port = free_port()
    (flwr_home / "config.toml").write_text(
        "[superlink]\n"
        'default = "spike"\n\n'
        "[superlink.spike]\n"
        f'address = "127.0.0.1:{link_port}"\n'
        "insecure = true\n"
    )
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(flwr_home),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",  # read by flower-superlink only
        FLWR_SUPEREXEC_TASK_POLL_INTERVAL="0.1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(EXT_PKG), env.get("PYTHONPATH")])),
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",  # daemons exec `flower-superexec`
        PYTHONUNBUFFERED="1",
    )
    procs: list[subprocess.Popen] = []
    logs = {}

    def start(name: str, cmd: list[str]) -> subprocess.Popen:
        logs[name] = work / f"{name}.log"
        f = open(logs[name], "wb")
        p = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True, cwd=work)
        procs.append(p)
        return p

    rc = 1
    t_start = time.time()
    try:
        start("superlink", [str(VENV_BIN / "flower-superlink"), "--insecure",
                            "--host", "127.0.0.1", "--port", str(link_port)])
        wait_port(link_port, 30)
        print(f"[spike] superlink up on 127.0.0.1:{link_port} after {time.time()-t_start:.1f}s")
        for i in range(1, args.nodes + 1):
            node_cfg = (f"store-path='{work}/d{i}.db' device-id='d{i}' "
                        f"delta={float(i)} num-examples={10 * i}")
            start(f"supernode{i}", [str(VENV_BIN / "flower-supernode"), "--insecure",
                                    "--superlink", f"127.0.0.1:{link_port}",
                                    "--host", "127.0.0.1", "--port", str(free_port()),
                                    "--node-config", node_cfg])

        result_path = work / "result.json"
        run_cfg = (f"num-rounds={args.rounds} min-nodes={args.nodes} "
                   f"server-config='{work}/s.toml' result-path='{result_path}' "
                   f"fail-on='{args.fail_on}'")
        cmd = [str(VENV_BIN / "flwr"), "run", str(APP_DIR), "spike",
               "--run-config", run_cfg, "--format", "json"]
        t_submit = time.time()
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, cwd=work)
        print(f"[spike] flwr run rc={out.returncode} stdout={out.stdout.strip()!r}")
        if out.returncode != 0:
            print(out.stderr[-3000:])
            return 1
        run_id = json.loads(out.stdout[out.stdout.index("{"):])["run-id"]

        stream_proc = None
        if args.stream:  # `flwr log <run-id> --stream` follows logs until the run ends
            logs["stream"] = work / "stream.log"
            stream_proc = subprocess.Popen(
                [str(VENV_BIN / "flwr"), "log", str(run_id), "spike", "--stream"],
                env=env, stdout=open(logs["stream"], "wb"), stderr=subprocess.STDOUT,
                start_new_session=True, cwd=work)
            procs.append(stream_proc)

        status, row = "", {}
        end = time.time() + args.timeout
        while time.time() < end:
            ls = subprocess.run([str(VENV_BIN / "flwr"), "ls", "spike", "--run-id",
                                 str(run_id), "--format", "json"],
                                env=env, capture_output=True, text=True, timeout=30, cwd=work)
            try:
                row = json.loads(ls.stdout)["runs"][0]
                status = row["status"]
            except (ValueError, KeyError, IndexError):
                status = f"?? {ls.stdout[-300:]} {ls.stderr[-300:]}"
            if status.startswith("finished"):
                break
            time.sleep(0.5)
        t_done = time.time()
        print(f"[spike] final ls row: {json.dumps(row)}")
        print(f"[spike] status={status} submit->finished={t_done - t_submit:.1f}s "
              f"total={t_done - t_start:.1f}s")
        if stream_proc is not None:
            try:
                stream_proc.wait(timeout=15)
                print(f"[spike] `flwr log --stream` exited rc={stream_proc.returncode}")
            except subprocess.TimeoutExpired:
                print("[spike] `flwr log --stream` still running 15 s after finish")

        ok = status == "finished:completed"
        if result_path.exists():
            res = json.loads(result_path.read_text())
            print(f"[spike] ServerApp saw run_config: {res['run_config']}")
            for h in res["history"]:
                print(f"[spike] round {h['round']}: {h['seconds']}s replies={h['replies']} "
                      f"errors={h['errors']} w0={h['w0']}")
                for e in h["echo"]:
                    print(f"[spike]   client node_config={e['node-config']} pid={e['pid']}")
            ok = ok and all(
                "device-id" in json.loads(e["node-config"])
                for h in res["history"] for e in h["echo"])
        else:
            print("[spike] no result file (ServerApp failed?)")
            ok = False
        rc = 0 if ok else 1
        return rc
    finally:
        left = kill_tree(procs)
        print(f"[spike] teardown: survivors={left}")
        if rc != 0 or args.keep_workdir:
            print(f"[spike] logs kept in {work}")
            for name, path in logs.items():
                print(f"----- {name} (tail) -----")
                print(path.read_text(errors="replace")[-2500:])
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
