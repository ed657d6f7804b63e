"""Nakhon's hub: ingest of the fleet's telemetry, the stores, the device registry, routing and the API."""
