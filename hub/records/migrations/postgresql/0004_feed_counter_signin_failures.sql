-- Several hub processes on one store (docs/production.md): feed ids from a one-row counter taken in the
-- writing transaction. Its row lock makes ids follow commit order without gaps, which the identity column
-- cannot (id 12 may commit before id 11), so a process following the table never skips a row
-- (hub/alarms/feed.py). Failed sign-ins in the store, so every hub process throttles the same guesser
-- (hub/auth/throttle.py).
CREATE TABLE IF NOT EXISTS feed_counter (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    last BIGINT NOT NULL
);
INSERT INTO feed_counter (id, last) SELECT 1, coalesce(max(id), 0) FROM feed ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS signin_failures (
    scope TEXT NOT NULL,
    key   TEXT NOT NULL,
    at    DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS signin_failures_by_key ON signin_failures (scope, key, at);
