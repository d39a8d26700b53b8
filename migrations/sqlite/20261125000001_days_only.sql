-- Only days are stored: each user's day sums (usage_day) and the sums of every conversation,
-- agent, model and prompt of that day (usage_day_member). A week's or a month's statistics are
-- made of its days when asked, its distinct counts from its days' members, so the aggregator
-- and backfills write a third of the rows they used to (no week or month copies, no distinct
-- lists). The days and day members move over as they are: they equal the ledger up to the
-- cursor, which stays where it is.

CREATE TABLE usage_day (
    account_id       TEXT    NOT NULL,
    -- 'YYYY-MM-DD', UTC
    day              TEXT    NOT NULL,
    input_tokens     INTEGER NOT NULL,
    output_tokens    INTEGER NOT NULL,
    total_tokens     INTEGER NOT NULL,
    cost_picos       INTEGER NOT NULL,
    messages         INTEGER NOT NULL,
    last_activity_at INTEGER,
    PRIMARY KEY (account_id, day)
) STRICT, WITHOUT ROWID;

CREATE TABLE usage_day_member (
    account_id       TEXT    NOT NULL,
    day              TEXT    NOT NULL,
    -- 'c' conversation, 'a' agent, 'm' model, 'p' prompt
    dimension        TEXT    NOT NULL,
    -- '' for events without one (not counted as distinct)
    value            TEXT    NOT NULL,
    input_tokens     INTEGER NOT NULL,
    output_tokens    INTEGER NOT NULL,
    total_tokens     INTEGER NOT NULL,
    cost_picos       INTEGER NOT NULL,
    messages         INTEGER NOT NULL,
    last_activity_at INTEGER,
    PRIMARY KEY (account_id, day, dimension, value)
) STRICT, WITHOUT ROWID;
-- No index by day: a day table is clustered by its key (account, day, …), so everyone's days
-- are read as each account's range of it (`account_id IN (SELECT account_id FROM account)`),
-- and writing a second copy of every key cost a third of a backfill's time.

INSERT INTO usage_day (account_id, day, input_tokens, output_tokens, total_tokens, cost_picos,
                       messages, last_activity_at)
SELECT account_id, bucket, input_tokens, output_tokens, total_tokens, cost_picos, messages,
       last_activity_at
FROM usage_rollup WHERE period = 'day';

INSERT INTO usage_day_member (account_id, day, dimension, value, input_tokens, output_tokens,
                              total_tokens, cost_picos, messages, last_activity_at)
SELECT account_id, bucket, dimension, value, input_tokens, output_tokens, total_tokens,
       cost_picos, messages, last_activity_at
FROM usage_rollup_member WHERE period = 'day';

DROP TABLE usage_rollup_distinct;
DROP TABLE usage_rollup_member;
DROP TABLE usage_rollup;
