"""The time-series store: readings, written in batches and read raw, bucketed or newest-first."""
