"""Operator actions on the fleet: promote, roll back, revoke a device, start a training run.

``FleetActions`` is the logic (registry, signing, audit); ``ReleaseChannel`` is how a
decision reaches the agents (MQTT in the server, in memory in tests).
"""

from server.actions.channel import InMemoryReleaseChannel, MqttReleaseChannel, ReleaseChannel
from server.actions.fleet import ActionConflictError, ActionUnavailableError, FleetActions, RunStarter

__all__ = [
    "ActionConflictError",
    "ActionUnavailableError",
    "FleetActions",
    "InMemoryReleaseChannel",
    "MqttReleaseChannel",
    "ReleaseChannel",
    "RunStarter",
]
