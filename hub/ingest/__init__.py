"""Ingest: MQTT subscription, validation against the wire contract, dead letters, dedup, batched commits, acks."""
