-- The queue schema before the events outbox (git show 85fdf80:sender/src/bulkrelay/queue/storage.py),
-- to test the migration of an existing database.
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    mail_from TEXT NOT NULL,
    message_id TEXT NOT NULL,
    source TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS recipients (
    id INTEGER PRIMARY KEY,
    message INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    address TEXT NOT NULL,
    domain TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    envelope_from TEXT,
    postfix_qid TEXT,
    dsn TEXT,
    last_reply TEXT
);
CREATE INDEX IF NOT EXISTS recipients_ready ON recipients(next_attempt, id) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS recipients_state ON recipients(state, id);
CREATE INDEX IF NOT EXISTS recipients_message ON recipients(message);
CREATE INDEX IF NOT EXISTS recipients_qid ON recipients(postfix_qid) WHERE postfix_qid IS NOT NULL;
CREATE TABLE IF NOT EXISTS state_counts (state TEXT PRIMARY KEY, n INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS recipients_count_ins AFTER INSERT ON recipients BEGIN
    INSERT INTO state_counts(state, n) VALUES (NEW.state, 1)
        ON CONFLICT(state) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS recipients_count_del AFTER DELETE ON recipients BEGIN
    UPDATE state_counts SET n = n - 1 WHERE state = OLD.state;
END;
CREATE TRIGGER IF NOT EXISTS recipients_count_upd AFTER UPDATE OF state ON recipients
    WHEN OLD.state <> NEW.state BEGIN
    UPDATE state_counts SET n = n - 1 WHERE state = OLD.state;
    INSERT INTO state_counts(state, n) VALUES (NEW.state, 1)
        ON CONFLICT(state) DO UPDATE SET n = n + 1;
END;
-- One row per recipient released to Postfix: the release policy's persistent memory.
CREATE TABLE IF NOT EXISTS releases (
    id INTEGER PRIMARY KEY,
    recipient INTEGER NOT NULL,
    at REAL NOT NULL,
    domain TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS releases_at ON releases(at);
CREATE INDEX IF NOT EXISTS releases_domain ON releases(domain, at);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS errors (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    recipient INTEGER,
    message INTEGER,
    address TEXT,
    reason TEXT NOT NULL
);
-- Queue ids seen in the Postfix log with their Message-ID and envelope sender, so rows left in
-- 'submitting' by a crash can be matched to what Postfix really accepted.
CREATE TABLE IF NOT EXISTS postfix_seen (
    qid TEXT PRIMARY KEY,
    message_id TEXT,
    envelope_from TEXT,
    at REAL NOT NULL,
    -- a result logged before the row knew its queue id (applied when it learns it)
    result_address TEXT,
    result_state TEXT,
    result_dsn TEXT,
    result_reply TEXT
);
CREATE INDEX IF NOT EXISTS postfix_seen_from ON postfix_seen(envelope_from);
CREATE INDEX IF NOT EXISTS postfix_seen_mid ON postfix_seen(message_id);
