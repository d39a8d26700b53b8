-- Members (conversations, agents, models, prompts of a rollup, with their sums) are kept per day
-- only. A week's or a month's distinct conversations, agents and models are kept in
-- usage_rollup_distinct, one row per (rollup, dimension, value): the aggregator adds a new event's
-- values with INSERT … ON CONFLICT DO NOTHING and raises the rollup's counts by the rows it
-- inserted, so no rollup is ever recounted by scanning its days.
CREATE TABLE usage_rollup_distinct (
    account_id TEXT NOT NULL,
    period     TEXT NOT NULL CHECK (period IN ('week', 'month')),
    bucket     TEXT NOT NULL,
    -- 'c' conversation, 'a' agent, 'm' model
    dimension  TEXT NOT NULL,
    value      TEXT NOT NULL,
    PRIMARY KEY (account_id, period, bucket, dimension, value)
);

-- The rollups are rebuilt from the ledger in the new shape: the aggregator starts again from
-- the first event (exact: it adds each event once, in one transaction with its cursor).
DELETE FROM usage_rollup_member;
DELETE FROM usage_rollup;
UPDATE rollup_cursor SET last_tx = 0, last_event_id = 0, verified_through = NULL;
