"""Alarms: rules over readings, events and liveness; a lifecycle with people in it; a live feed of changes."""
