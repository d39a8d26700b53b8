-- Who may log in and how: roles, password hashes, server-side sessions, API keys, and the
-- failed-login record that throttles guessing. Secrets are stored only as hashes:
-- passwords as argon2id PHC strings, session tokens and API keys as SHA-256 (hex).

ALTER TABLE account ADD COLUMN role TEXT NOT NULL DEFAULT 'user' CHECK (role IN ('admin', 'user'));

CREATE TABLE credential (
    account_id    TEXT    NOT NULL PRIMARY KEY REFERENCES account (account_id) ON DELETE CASCADE,
    password_hash TEXT    NOT NULL,
    updated_at    BIGINT  NOT NULL
);

CREATE TABLE session (
    token_hash TEXT    NOT NULL PRIMARY KEY,
    account_id TEXT    NOT NULL REFERENCES account (account_id) ON DELETE CASCADE,
    created_at BIGINT  NOT NULL,
    expires_at BIGINT  NOT NULL
);
CREATE INDEX session_account ON session (account_id);
CREATE INDEX session_expiry ON session (expires_at);

CREATE TABLE api_key (
    api_key_id   BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id   TEXT    NOT NULL REFERENCES account (account_id) ON DELETE CASCADE,
    name         TEXT    NOT NULL,
    -- The public beginning of the key (e.g. tm_3f9a1c2b), to recognise it in lists.
    prefix       TEXT    NOT NULL,
    secret_hash  TEXT    NOT NULL UNIQUE,
    -- Space-separated, e.g. 'usage:record'; '' for none.
    scopes       TEXT    NOT NULL DEFAULT '',
    created_at   BIGINT  NOT NULL,
    last_used_at BIGINT,
    revoked_at   BIGINT
);
CREATE INDEX api_key_account ON api_key (account_id);

-- One row per failed login, for 'account:<id>' and 'address:<ip>'; old rows are pruned.
CREATE TABLE login_failure (
    subject   TEXT    NOT NULL,
    failed_at BIGINT  NOT NULL
);
CREATE INDEX login_failure_subject ON login_failure (subject, failed_at);
