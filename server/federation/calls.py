"""The fleet's federation call: agents in on-demand mode run their SuperNode only for a run.

A run is called (``open``) just before it is submitted to the SuperLink, so agents start
their SuperNodes while the ServerApp starts; the ServerApp ends the call when the run is
over, succeeded or failed (and a submission that fails ends it at once). The call is
retained (QoS 1) on ``topics.federation_call``, so an agent that comes online during the
run joins it, and it is signed with the operator key (shared.commands). It expires after
the longest the run may take (``ServerSettings.run_lifetime_s``), in case its ServerApp
dies without ending it.

Agents with ``federation_mode = "always"`` do not listen, so a call that cannot be
published costs only the on-demand agents: it is logged and the run goes on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from server.config import ServerSettings
from server.federation.catalog import DEFAULT_STRATEGY
from server.federation.flower import submit_run
from server.release.publisher import ACK_TIMEOUT_S
from shared import topics
from shared.commands import federation_call
from shared.mqtt import BrokerAddress, MqttClient
from shared.signing import load_private_key

log = logging.getLogger(__name__)


def announce(
    settings: ServerSettings,
    run_id: str,
    rounds: int,
    state: Literal["open", "ended"],
    client: MqttClient | None = None,
) -> bool:
    """Publish the signed call (on ``client``, or on a connection of its own); False if it could not."""
    try:
        call = federation_call(
            load_private_key(settings.signing_key),
            run_id=run_id,
            fleet=settings.fleet,
            state=state,
            ttl_s=settings.run_lifetime_s(rounds),
        )
        own = client is None
        if client is None:
            client = MqttClient(
                BrokerAddress.parse(settings.broker_url),
                f"fedforge-call-{run_id}-{state}",
                persistent=False,
                **settings.mqtt_tls(),
            )
            client.start()
        try:
            client.publish_and_wait(
                topics.federation_call(settings.fleet), call.to_bytes(), qos=1, retain=True, timeout=ACK_TIMEOUT_S
            )
        finally:
            if own:
                client.stop()
    except Exception as exc:  # the run must not fail for it: agents in "always" mode do not need it
        log.warning("federation call %s of run %s not published (on-demand agents miss it): %s", state, run_id, exc)
        return False
    log.info("federation call %s: run %s", state, run_id)
    return True


def submit_called_run(
    settings: ServerSettings,
    config_path: Path,
    run_id: str,
    rounds: int,
    min_agents: int,
    strategy: str = DEFAULT_STRATEGY,
    client: MqttClient | None = None,
) -> str:
    """Call the fleet, then submit the run to the SuperLink; returns Flower's run id."""
    announce(settings, run_id, rounds, "open", client)
    try:
        return submit_run(settings, config_path, run_id, rounds, min_agents, strategy)
    except BaseException:
        announce(settings, run_id, rounds, "ended", client)
        raise
