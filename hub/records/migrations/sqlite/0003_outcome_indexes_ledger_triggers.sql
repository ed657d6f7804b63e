-- Indexes on the columns 0002 may have added, and the ledger's append-only triggers in their present form:
-- nothing in the ledger changes, except that the retention purge (hub/retention.py) may erase a citizen reference.
CREATE INDEX IF NOT EXISTS commands_by_outcome ON commands (outcome, expires_at);
CREATE INDEX IF NOT EXISTS payments_by_status ON payments (status, expires_at);
DROP TRIGGER IF EXISTS ledger_append_only_update;
DROP TRIGGER IF EXISTS ledger_append_only_columns;
CREATE TRIGGER IF NOT EXISTS ledger_append_only_columns BEFORE UPDATE OF
    id, at, local_date, entry, office, fiscal_year, receipt_no, refers_to, tx_id, device, service, method,
    amount_satang, reason, paid_at, by_user ON ledger
    BEGIN SELECT RAISE(ABORT, 'the ledger is append-only: add a compensating entry'); END;
CREATE TRIGGER IF NOT EXISTS ledger_citizen_ref_only_erased BEFORE UPDATE OF citizen_ref ON ledger
    WHEN NEW.citizen_ref IS NOT NULL
    BEGIN SELECT RAISE(ABORT, 'the ledger is append-only: a citizen reference can only be erased'); END;
