"""The digital twin: the fleet's ServerApp and ClientApp in Flower's Simulation Engine (Ray)."""
