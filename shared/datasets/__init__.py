"""Data sets for fedforge tasks: fetching, verifying, caching, splitting, replaying.

Only set-up tools and simulations use this package (it pulls in pandas and pyarrow); the
edge agent receives records over MQTT and never reads these files.
"""
