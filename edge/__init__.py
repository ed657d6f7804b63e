"""Nakhon's edge: the agents that run on a device and the drivers that speak to its hardware."""
