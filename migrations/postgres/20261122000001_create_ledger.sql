-- The user accounts whose tokens are metered, and the append-only usage ledger.
-- Times are microseconds since the Unix epoch, UTC.

CREATE TABLE account (
    account_id        TEXT   NOT NULL PRIMARY KEY,
    display_name      TEXT   NOT NULL,
    token_limit       BIGINT NOT NULL CHECK (token_limit > 0),
    -- Counts against token_limit in the current period (resets when periods arrive).
    tokens_used       BIGINT NOT NULL DEFAULT 0 CHECK (tokens_used >= 0),
    -- Held by model calls in flight; settled or released when they end.
    tokens_reserved   BIGINT NOT NULL DEFAULT 0 CHECK (tokens_reserved >= 0),
    -- Never resets: always the sum of this account's usage_event.tokens.
    lifetime_tokens   BIGINT NOT NULL DEFAULT 0 CHECK (lifetime_tokens >= 0),
    -- 'lifetime' (never resets) for now; later 'monthly' etc. with period_started_at.
    limit_period      TEXT   NOT NULL DEFAULT 'lifetime',
    period_started_at BIGINT NOT NULL,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL
);

CREATE TABLE usage_event (
    usage_event_id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id            TEXT   NOT NULL REFERENCES account (account_id),
    tokens                BIGINT NOT NULL CHECK (tokens > 0),
    input_tokens          BIGINT CHECK (input_tokens >= 0),
    output_tokens         BIGINT CHECK (output_tokens >= 0),
    model                 TEXT,
    source                TEXT   NOT NULL,
    idempotency_key       TEXT   NOT NULL,
    -- The account's counters right after this event: the answer a retry gets again.
    tokens_used_after     BIGINT NOT NULL,
    lifetime_tokens_after BIGINT NOT NULL,
    token_limit_at        BIGINT NOT NULL,
    created_at            BIGINT NOT NULL
);

-- Leading column idempotency_key so a batch's keys are found with one IN (...) lookup.
CREATE UNIQUE INDEX usage_event_idempotency ON usage_event (idempotency_key, account_id);
CREATE INDEX usage_event_account_time ON usage_event (account_id, created_at);
