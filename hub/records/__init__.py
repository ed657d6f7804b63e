"""The records store: everything transactional (registry, dedup, commands, finance, GIS, accounts, audit)."""
