"""The server's MQTT side: following fleet status and serving chunk re-requests."""
