"""Provisioning: writes device configs and broker credentials for field technicians; nothing imports it."""
