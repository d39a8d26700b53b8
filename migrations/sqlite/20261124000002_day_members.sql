-- Members (conversations, agents, models, prompts of a rollup, with their sums) are kept per day
-- only. Every rollup's distinct conversations, agents and models are kept in
-- usage_rollup_distinct, one row per (rollup, dimension, value): the aggregator adds a batch's
-- values with INSERT … ON CONFLICT DO NOTHING and raises each rollup's counts by the rows that
-- were new, in the same upsert that adds its sums, so no rollup is ever recounted by scanning.
CREATE TABLE usage_rollup_distinct (
    account_id TEXT NOT NULL,
    period     TEXT NOT NULL CHECK (period IN ('day', 'week', 'month')),
    bucket     TEXT NOT NULL,
    -- 'c' conversation, 'a' agent, 'm' model
    dimension  TEXT NOT NULL,
    value      TEXT NOT NULL,
    PRIMARY KEY (account_id, period, bucket, dimension, value)
) STRICT, WITHOUT ROWID;
-- Rebuilds empty a period's buckets by range.
CREATE INDEX usage_rollup_distinct_period ON usage_rollup_distinct (period, bucket);

-- The rollups are rebuilt from the ledger in the new shape: the aggregator starts again from
-- the first event (exact: it adds each event once, in one transaction with its cursor).
DELETE FROM usage_rollup_member;
DELETE FROM usage_rollup;
UPDATE rollup_cursor SET last_tx = 0, last_event_id = 0, verified_through = NULL;
