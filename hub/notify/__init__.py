"""Notifications of alarms: durable outbox rows sent by a worker to webhooks, LINE and e-mail."""
