-- Usage analytics: what each event belonged to, and rollups kept current from the ledger.
--
-- usage_rollup: per user, period ('day', 'week' = ISO week from Monday, 'month') and bucket
-- (the period's first day, 'YYYY-MM-DD', UTC) the sums of the ledger's events.
-- usage_rollup_member: the conversations, agents, models and prompts seen in each rollup, with
-- their own sums; distinct counts are the number of members ('' holds events without one and is
-- not counted). The aggregator adds each new event exactly once, moving rollup_cursor in the
-- same transaction: rollups always equal the events up to the cursor.

ALTER TABLE usage_event ADD COLUMN conversation_id TEXT;
ALTER TABLE usage_event ADD COLUMN agent_id TEXT;
ALTER TABLE usage_event ADD COLUMN prompt_id TEXT;
-- Days of everyone's events: verification, rebuilds and model-filtered statistics.
CREATE INDEX usage_event_time ON usage_event (created_at);

CREATE TABLE usage_rollup (
    account_id       TEXT    NOT NULL,
    period           TEXT    NOT NULL CHECK (period IN ('day', 'week', 'month')),
    bucket           TEXT    NOT NULL,
    input_tokens     INTEGER NOT NULL,
    output_tokens    INTEGER NOT NULL,
    total_tokens     INTEGER NOT NULL,
    cost_picos       INTEGER NOT NULL,
    messages         INTEGER NOT NULL,
    conversations    INTEGER NOT NULL DEFAULT 0,
    agents           INTEGER NOT NULL DEFAULT 0,
    models           INTEGER NOT NULL DEFAULT 0,
    last_activity_at INTEGER,
    PRIMARY KEY (account_id, period, bucket)
) STRICT, WITHOUT ROWID;
CREATE INDEX usage_rollup_period_bucket ON usage_rollup (period, bucket);

CREATE TABLE usage_rollup_member (
    account_id       TEXT    NOT NULL,
    period           TEXT    NOT NULL,
    bucket           TEXT    NOT NULL,
    -- 'c' conversation, 'a' agent, 'm' model, 'p' prompt
    dimension        TEXT    NOT NULL,
    value            TEXT    NOT NULL,
    input_tokens     INTEGER NOT NULL,
    output_tokens    INTEGER NOT NULL,
    total_tokens     INTEGER NOT NULL,
    cost_picos       INTEGER NOT NULL,
    messages         INTEGER NOT NULL,
    last_activity_at INTEGER,
    PRIMARY KEY (account_id, period, bucket, dimension, value)
) STRICT, WITHOUT ROWID;
CREATE INDEX usage_rollup_member_period ON usage_rollup_member (period, dimension, bucket);

-- How far the aggregator has read the ledger: events are taken in (last_tx, last_event_id)
-- order; on SQLite last_tx is always 0 (one writer at a time: ids grow in commit order).
-- verified_through: the last day the nightly check verified.
CREATE TABLE rollup_cursor (
    name             TEXT    NOT NULL PRIMARY KEY,
    last_tx          INTEGER NOT NULL DEFAULT 0,
    last_event_id    INTEGER NOT NULL DEFAULT 0,
    verified_through TEXT,
    updated_at       INTEGER NOT NULL DEFAULT 0
) STRICT;
INSERT INTO rollup_cursor (name) VALUES ('rollups');
