-- The hub's schema as it stood before versioned migrations, every statement IF NOT EXISTS: an embedded
-- database made by an earlier hub keeps its tables and data, a new one gets them all.

-- the store: registry of links, dedup, readings, events, dead letters, commands, transactions (hub/store)
CREATE TABLE IF NOT EXISTS devices (
    device          TEXT PRIMARY KEY,
    node            TEXT,
    site            TEXT,
    state           TEXT NOT NULL DEFAULT 'unknown',
    first_seen      REAL NOT NULL,
    last_seen       REAL NOT NULL,
    last_status_at  REAL,
    min_seq         INTEGER,
    max_seq         INTEGER,
    received        INTEGER NOT NULL DEFAULT 0,
    duplicates      INTEGER NOT NULL DEFAULT 0,
    dropped_at_edge INTEGER NOT NULL DEFAULT 0,
    heartbeat       TEXT
);
CREATE TABLE IF NOT EXISTS received (
    device  TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    kind    TEXT NOT NULL,
    PRIMARY KEY (device, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS readings (
    device   TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    idx      INTEGER NOT NULL,
    ts       INTEGER NOT NULL,
    sensor   TEXT NOT NULL,
    quantity TEXT NOT NULL,
    value,
    is_bool  INTEGER NOT NULL DEFAULT 0,
    unit     TEXT,
    PRIMARY KEY (device, seq, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS readings_by_quantity ON readings (device, quantity, ts);
CREATE INDEX IF NOT EXISTS readings_by_time ON readings (device, ts);
CREATE TABLE IF NOT EXISTS latest (
    device   TEXT NOT NULL,
    sensor   TEXT NOT NULL,
    quantity TEXT NOT NULL,
    ts       INTEGER NOT NULL,
    PRIMARY KEY (device, sensor, quantity)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    device   TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    ts       INTEGER NOT NULL,
    sensor   TEXT NOT NULL,
    event    TEXT NOT NULL,
    severity TEXT NOT NULL,
    data     TEXT NOT NULL,
    PRIMARY KEY (device, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deadletters (
    id          INTEGER PRIMARY KEY,
    received_at REAL NOT NULL,
    topic       TEXT NOT NULL,
    reason      TEXT NOT NULL,
    detail      TEXT NOT NULL,
    size        INTEGER NOT NULL,
    payload     BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS deadletters_by_reason ON deadletters (reason, id);
CREATE TABLE IF NOT EXISTS commands (
    cmd_id     TEXT PRIMARY KEY,
    device     TEXT NOT NULL,
    name       TEXT NOT NULL,
    args       TEXT NOT NULL,
    sent_at    REAL NOT NULL,
    ok         INTEGER,
    result     TEXT,
    error      TEXT,
    replied_at REAL,
    outcome      TEXT,
    expires_at   REAL,
    published_at REAL,
    replays      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS commands_by_device ON commands (device, sent_at);
CREATE TABLE IF NOT EXISTS transactions (
    tx_id       TEXT PRIMARY KEY,
    device      TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    received_at REAL NOT NULL,
    status      TEXT NOT NULL,
    outcome     TEXT NOT NULL
);

-- finance: ledger, receipt counters, payments, reconciliations (hub/finance)
CREATE TABLE IF NOT EXISTS ledger (
    id           INTEGER PRIMARY KEY,
    at           TEXT NOT NULL,
    local_date   TEXT NOT NULL,
    entry        TEXT NOT NULL CHECK (entry IN ('payment', 'void', 'refund')),
    office       TEXT NOT NULL,
    fiscal_year  INTEGER NOT NULL,
    receipt_no   TEXT,
    refers_to    INTEGER REFERENCES ledger (id),
    tx_id        TEXT,
    device       TEXT NOT NULL,
    service      TEXT NOT NULL,
    method       TEXT NOT NULL,
    amount_satang INTEGER NOT NULL,
    citizen_ref  TEXT,
    reason       TEXT,
    paid_at      TEXT,
    by_user      TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS ledger_receipts ON ledger (receipt_no) WHERE receipt_no IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS ledger_one_reversal ON ledger (refers_to) WHERE refers_to IS NOT NULL;
CREATE INDEX IF NOT EXISTS ledger_by_day ON ledger (local_date, device);
CREATE TRIGGER IF NOT EXISTS ledger_append_only_delete BEFORE DELETE ON ledger
    BEGIN SELECT RAISE(ABORT, 'the ledger is append-only: add a compensating entry'); END;
CREATE TABLE IF NOT EXISTS receipt_counters (
    office      TEXT NOT NULL,
    fiscal_year INTEGER NOT NULL,
    last        INTEGER NOT NULL,
    PRIMARY KEY (office, fiscal_year)
);
CREATE TABLE IF NOT EXISTS payments (
    tx_id         TEXT PRIMARY KEY,
    device        TEXT NOT NULL,
    office        TEXT NOT NULL,
    service       TEXT NOT NULL,
    method        TEXT NOT NULL,
    amount_satang INTEGER NOT NULL,
    citizen_ref   TEXT,
    status        TEXT NOT NULL CHECK (status IN ('pending', 'paid', 'expired', 'cancelled')),
    reference     TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    paid_at       TEXT,
    bank_ref      TEXT,
    receipt_no    TEXT,
    kiosk_at      TEXT,
    expires_at    TEXT,
    ended_at      TEXT
);
CREATE TABLE IF NOT EXISTS reconciliations (
    id             INTEGER PRIMARY KEY,
    device         TEXT NOT NULL,
    day            TEXT NOT NULL,
    counted_satang INTEGER NOT NULL,
    ledger_satang  INTEGER NOT NULL,
    entries        INTEGER NOT NULL,
    counted_by     TEXT NOT NULL,
    at             TEXT NOT NULL,
    recorded_by    TEXT
);

-- GIS: citizen reports and their history (hub/gis)
CREATE TABLE IF NOT EXISTS reports (
    id           INTEGER PRIMARY KEY,
    tx_id        TEXT UNIQUE,
    device       TEXT NOT NULL,
    category     TEXT NOT NULL,
    description  TEXT NOT NULL,
    lat          REAL NOT NULL,
    lon          REAL NOT NULL,
    zone         TEXT,
    status       TEXT NOT NULL,
    assignee     TEXT,
    citizen_ref  TEXT,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS reports_by_place ON reports (lon, lat);
CREATE TABLE IF NOT EXISTS report_history (
    report_id INTEGER NOT NULL REFERENCES reports (id),
    at        TEXT NOT NULL,
    status    TEXT NOT NULL,
    assignee  TEXT,
    note      TEXT,
    by_user   TEXT
);

-- users, sessions, API tokens (hub/auth)
CREATE TABLE IF NOT EXISTS users (
    name          TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    roles         TEXT NOT NULL,
    disabled      INTEGER NOT NULL DEFAULT 0,
    created_at    REAL NOT NULL,
    changed_at    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    digest     TEXT PRIMARY KEY,
    user       TEXT NOT NULL REFERENCES users (name),
    address    TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions (user);
CREATE TABLE IF NOT EXISTS api_tokens (
    id         INTEGER PRIMARY KEY,
    digest     TEXT NOT NULL UNIQUE,
    user       TEXT NOT NULL REFERENCES users (name),
    label      TEXT NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL
);

-- the audit log, append-only (hub/audit.py)
CREATE TABLE IF NOT EXISTS audit (
    id       INTEGER PRIMARY KEY,
    at       TEXT NOT NULL,
    user     TEXT NOT NULL,
    address  TEXT NOT NULL,
    action   TEXT NOT NULL,
    object   TEXT NOT NULL,
    before   TEXT,
    after    TEXT
);
CREATE INDEX IF NOT EXISTS audit_by_user ON audit (user, id);
CREATE INDEX IF NOT EXISTS audit_by_object ON audit (object, id);
CREATE TRIGGER IF NOT EXISTS audit_append_only_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_append_only_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;

-- the device registry, enrollment codes, certificates (hub/provision)
CREATE TABLE IF NOT EXISTS registry (
    device     TEXT PRIMARY KEY,
    node       TEXT NOT NULL,
    site       TEXT NOT NULL,
    lat        REAL,
    lon        REAL,
    status     TEXT NOT NULL,
    created_at REAL NOT NULL,
    created_by TEXT NOT NULL,
    changed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS enrollment_codes (
    digest     TEXT PRIMARY KEY,
    device     TEXT NOT NULL,
    expires_at REAL NOT NULL,
    used_at    REAL,
    created_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS certificates (
    serial     TEXT PRIMARY KEY,
    device     TEXT NOT NULL,
    not_after  REAL NOT NULL,
    issued_at  REAL NOT NULL,
    revoked_at REAL
);
CREATE INDEX IF NOT EXISTS certificates_by_device ON certificates (device);

-- alarms, notifications (hub/alarms)
CREATE TABLE IF NOT EXISTS alarms (
    id            INTEGER PRIMARY KEY,
    rule          TEXT NOT NULL,
    device        TEXT NOT NULL,
    sensor        TEXT,
    severity      TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('active', 'acknowledged', 'shelved', 'cleared')),
    latched       INTEGER NOT NULL,
    title_th      TEXT NOT NULL,
    title_en      TEXT NOT NULL,
    value         REAL,
    detail        TEXT NOT NULL,
    count         INTEGER NOT NULL DEFAULT 1,
    first_seen    REAL NOT NULL,
    last_seen     REAL NOT NULL,
    acked_by      TEXT,
    acked_at      REAL,
    cleared_by    TEXT,
    cleared_at    REAL,
    shelved_until REAL,
    shelved_by    TEXT,
    shelved_from  TEXT,
    next_step     INTEGER NOT NULL DEFAULT -1
);
CREATE UNIQUE INDEX IF NOT EXISTS alarms_open ON alarms (rule, device) WHERE state != 'cleared';
CREATE INDEX IF NOT EXISTS alarms_by_state ON alarms (state, id);
CREATE TABLE IF NOT EXISTS alarm_history (
    alarm_id INTEGER NOT NULL REFERENCES alarms (id),
    at       REAL NOT NULL,
    action   TEXT NOT NULL,
    user     TEXT,
    comment  TEXT,
    state    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alarm_history_by_alarm ON alarm_history (alarm_id, at);
CREATE TABLE IF NOT EXISTS alarm_rules (
    id         TEXT PRIMARY KEY,
    body       TEXT NOT NULL,
    updated_at REAL NOT NULL,
    updated_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS notifications (
    id         INTEGER PRIMARY KEY,
    alarm_id   INTEGER NOT NULL REFERENCES alarms (id),
    channel    TEXT NOT NULL,
    step       INTEGER NOT NULL,
    retry_key  TEXT NOT NULL,
    language   TEXT NOT NULL,
    subject    TEXT NOT NULL,
    body       TEXT NOT NULL,
    payload    TEXT NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'failed')),
    attempts   INTEGER NOT NULL DEFAULT 0,
    next_at    REAL NOT NULL,
    created_at REAL NOT NULL,
    sent_at    REAL,
    last_error TEXT,
    UNIQUE (alarm_id, channel, step)
);
CREATE INDEX IF NOT EXISTS notifications_due ON notifications (state, next_at);
CREATE TABLE IF NOT EXISTS notification_attempts (
    notification_id INTEGER NOT NULL REFERENCES notifications (id),
    at              REAL NOT NULL,
    ok              INTEGER NOT NULL,
    detail          TEXT NOT NULL,
    elapsed_ms      REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS notification_attempts_by_id ON notification_attempts (notification_id, at);
CREATE INDEX IF NOT EXISTS events_by_time ON events (ts, device, seq);

-- the live feed (hub/alarms/feed.py)
CREATE TABLE IF NOT EXISTS feed (
    id   INTEGER PRIMARY KEY AUTOINCREMENT,
    at   REAL NOT NULL,
    type TEXT NOT NULL,
    key  TEXT UNIQUE,
    data TEXT NOT NULL
);
