-- Several hub processes on one store (docs/production.md): feed ids from a one-row counter taken in the
-- writing transaction, so ids follow commit order without gaps (hub/alarms/feed.py); it starts past every id
-- AUTOINCREMENT handed out, so a client's Last-Event-ID never skips a new row. Failed sign-ins in the store,
-- so every hub process throttles the same guesser (hub/auth/throttle.py).
CREATE TABLE IF NOT EXISTS feed_counter (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    last INTEGER NOT NULL
);
INSERT INTO feed_counter (id, last)
    SELECT 1, max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'feed'), 0),
                  coalesce((SELECT max(id) FROM feed), 0))
    WHERE true ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS signin_failures (
    scope TEXT NOT NULL,
    key   TEXT NOT NULL,
    at    REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS signin_failures_by_key ON signin_failures (scope, key, at);
