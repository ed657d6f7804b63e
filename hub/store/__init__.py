"""Stores behind one interface (:mod:`hub.store.base`); SQLite is the embedded default."""
