"""GIS: problem reports as features assigned to municipal zones, device locations, and OGC API - Features."""
