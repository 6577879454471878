"""The one paho-mqtt adapter of the project (agent, server, ServerApp and replay use it).

``client``: ``MqttClient``, a reconnecting MQTT 5 client with a persistent session, run on
paho's thread or on an asyncio loop; ``config``: broker addresses, TLS files, the will;
``loop``: the loop mode's I/O (the agent's); ``wire``: the bulk read path's packet decoding.
"""

from shared.mqtt.client import MessageHandler, MqttClient
from shared.mqtt.config import BrokerAddress, MqttError, TlsKwargs, Will, tls_kwargs

__all__ = ["BrokerAddress", "MessageHandler", "MqttClient", "MqttError", "TlsKwargs", "Will", "tls_kwargs"]
