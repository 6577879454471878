"""ServerApp (Message API, hand-written FedAvg loop with push/pull)."""

import json
import os
import time

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


def wait_for_nodes(grid: Grid, n: int, timeout: float, poll: float = 0.5) -> list[int]:
    end = time.time() + timeout
    while True:
        ids = list(grid.get_node_ids())
        if len(ids) >= n:
            return ids
        if time.time() > end:
            raise TimeoutError(f"only {len(ids)}/{n} nodes connected after {timeout}s")
        time.sleep(poll)


def send_and_collect(grid: Grid, msgs: list[Message], timeout: float, poll: float = 0.1):
    """push_messages + pull_messages with a short poll (send_and_receive sleeps 3 s)."""
    pending = {mid for mid in grid.push_messages(msgs) if mid}
    replies: list[Message] = []
    end = time.time() + timeout
    while pending and time.time() < end:
        got = list(grid.pull_messages(pending))
        replies.extend(got)
        pending -= {m.metadata.reply_to_message_id for m in got}
        if pending:
            time.sleep(poll)
    return replies, pending


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = dict(context.run_config)
    print(f"SPIKE run_config={json.dumps(rc)}", flush=True)
    num_rounds = int(rc["num-rounds"])
    min_nodes = int(rc["min-nodes"])
    out_path = str(rc.get("result-path", ""))

    node_ids = wait_for_nodes(grid, min_nodes, timeout=float(rc["wait-nodes-s"]))
    print(f"SPIKE node_ids={node_ids}", flush=True)

    weights = [np.zeros((3,), dtype=np.float32), np.ones((2, 2), dtype=np.float32)]
    history = []
    for rnd in range(1, num_rounds + 1):
        t0 = time.time()
        node_ids = list(grid.get_node_ids())
        msgs = []
        for nid in node_ids:
            content = RecordDict(
                {
                    "arrays": ArrayRecord(weights),
                    "config": ConfigRecord(
                        {"server-round": rnd, "lr": 0.1, "fail-on": str(rc.get("fail-on", ""))}
                    ),
                }
            )
            msgs.append(
                Message(content=content, dst_node_id=nid, message_type=MessageType.TRAIN,
                        group_id=str(rnd))
            )
        replies, missing = send_and_collect(grid, msgs, timeout=float(rc["round-timeout-s"]))
        ok, errors, echoes = [], [], []
        for r in replies:
            if r.has_error():
                errors.append(
                    {"node": r.metadata.src_node_id, "code": r.error.code, "reason": r.error.reason}
                )
                continue
            n = int(r.content["metrics"]["num-examples"])
            ok.append((r.content["arrays"].to_numpy_ndarrays(), n))
            echoes.append(dict(r.content["echo"]))
        if errors:
            print(f"SPIKE round {rnd} errors={errors}", flush=True)
        if not ok:
            raise RuntimeError(f"round {rnd}: no successful replies; errors={errors}")
        total = sum(n for _, n in ok)
        weights = [
            sum(arrs[i] * (n / total) for arrs, n in ok).astype(np.float32)
            for i in range(len(weights))
        ]
        dt = time.time() - t0
        history.append({"round": rnd, "seconds": round(dt, 3), "replies": len(ok),
                        "errors": errors, "missing": len(missing), "echo": echoes,
                        "w0": weights[0].tolist()})
        print(f"SPIKE round {rnd} took {dt:.2f}s replies={len(ok)} w0={weights[0].tolist()}",
              flush=True)
    if out_path:
        with open(out_path, "w") as f:
            json.dump({"run_config": rc, "history": history, "serverapp_pid": os.getpid()}, f)
