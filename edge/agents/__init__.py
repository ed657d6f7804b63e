"""Agents: scheduling, the durable outbox and the broker connection; no knowledge of bytes on a wire."""
