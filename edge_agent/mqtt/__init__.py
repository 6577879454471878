"""The agent's MQTT link (a thin layer over shared.mqtt)."""

from edge_agent.mqtt.link import AgentLink, client_id_for

__all__ = ["AgentLink", "client_id_for"]
