"""The hub's time-series stores: where readings live (SQLite embedded, VictoriaMetrics in production)."""
