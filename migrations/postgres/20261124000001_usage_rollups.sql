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
-- The writing transaction's id. Identity values are handed out before commit, so with several
-- writers a smaller id can become visible after a larger one; the aggregator therefore reads in
-- (tx_id, usage_event_id) order and only below the oldest transaction still running
-- (pg_snapshot_xmin), where nothing new can appear any more.
ALTER TABLE usage_event ADD COLUMN tx_id xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX usage_event_tx ON usage_event (tx_id, usage_event_id);

CREATE TABLE usage_rollup (
    account_id       TEXT   NOT NULL,
    period           TEXT   NOT NULL CHECK (period IN ('day', 'week', 'month')),
    bucket           TEXT   NOT NULL,
    input_tokens     BIGINT NOT NULL,
    output_tokens    BIGINT NOT NULL,
    total_tokens     BIGINT NOT NULL,
    cost_picos       BIGINT NOT NULL,
    messages         BIGINT NOT NULL,
    conversations    BIGINT NOT NULL DEFAULT 0,
    agents           BIGINT NOT NULL DEFAULT 0,
    models           BIGINT NOT NULL DEFAULT 0,
    last_activity_at BIGINT,
    PRIMARY KEY (account_id, period, bucket)
);
CREATE INDEX usage_rollup_period_bucket ON usage_rollup (period, bucket);

CREATE TABLE usage_rollup_member (
    account_id       TEXT   NOT NULL,
    period           TEXT   NOT NULL,
    bucket           TEXT   NOT NULL,
    -- 'c' conversation, 'a' agent, 'm' model, 'p' prompt
    dimension        TEXT   NOT NULL,
    value            TEXT   NOT NULL,
    input_tokens     BIGINT NOT NULL,
    output_tokens    BIGINT NOT NULL,
    total_tokens     BIGINT NOT NULL,
    cost_picos       BIGINT NOT NULL,
    messages         BIGINT NOT NULL,
    last_activity_at BIGINT,
    PRIMARY KEY (account_id, period, bucket, dimension, value)
);
CREATE INDEX usage_rollup_member_period ON usage_rollup_member (period, dimension, bucket);

-- How far the aggregator has read the ledger, in (last_tx, last_event_id) order.
-- verified_through: the last day the nightly check verified.
CREATE TABLE rollup_cursor (
    name             TEXT   NOT NULL PRIMARY KEY,
    last_tx          BIGINT NOT NULL DEFAULT 0,
    last_event_id    BIGINT NOT NULL DEFAULT 0,
    verified_through TEXT,
    updated_at       BIGINT NOT NULL DEFAULT 0
);
INSERT INTO rollup_cursor (name) VALUES ('rollups');
