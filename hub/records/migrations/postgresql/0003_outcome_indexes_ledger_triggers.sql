-- Indexes on the columns 0002 adds to older SQLite files, and the ledger's append-only trigger.
CREATE INDEX IF NOT EXISTS commands_by_outcome ON commands (outcome, expires_at);
CREATE INDEX IF NOT EXISTS payments_by_status ON payments (status, expires_at);
-- Nothing in the ledger changes, except that the retention purge may erase a citizen reference (set it NULL);
-- DELETE and TRUNCATE are refused. SQLSTATE 23000 (integrity_constraint_violation): the store reports a
-- refused record, as for SQLite's RAISE(ABORT).
CREATE OR REPLACE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'UPDATE' THEN
        RAISE EXCEPTION 'the ledger is append-only: add a compensating entry' USING ERRCODE = '23000';
    END IF;
    IF (to_jsonb(NEW) - 'citizen_ref') IS DISTINCT FROM (to_jsonb(OLD) - 'citizen_ref') THEN
        RAISE EXCEPTION 'the ledger is append-only: add a compensating entry' USING ERRCODE = '23000';
    END IF;
    IF NEW.citizen_ref IS NOT NULL AND NEW.citizen_ref IS DISTINCT FROM OLD.citizen_ref THEN
        RAISE EXCEPTION 'the ledger is append-only: a citizen reference can only be erased' USING ERRCODE = '23000';
    END IF;
    RETURN NEW;
END;
$$;
DROP TRIGGER IF EXISTS ledger_append_only_rows ON ledger;
CREATE TRIGGER ledger_append_only_rows BEFORE UPDATE OR DELETE ON ledger
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
DROP TRIGGER IF EXISTS ledger_append_only_truncate ON ledger;
CREATE TRIGGER ledger_append_only_truncate BEFORE TRUNCATE ON ledger
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();

