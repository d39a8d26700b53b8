-- Postgres keeps a user's day members packed: one row per user, day and dimension, its members
-- in parallel arrays sorted by value (byte order), instead of one row per member. A month of
-- 10 M events a year has ~816,000 members but ~120,000 user-day-dimensions; writing and
-- checking a row per member cost a backfill about 4.5 s a month of its ~10 s. Readers see the
-- members as before, through the view `usage_day_member` (one row per member, the same
-- columns as SQLite's table). The aggregator merges what it adds into the packed rows.
CREATE TABLE usage_day_members (
    account_id       TEXT COLLATE "C" NOT NULL,
    -- 'YYYY-MM-DD', UTC
    day              TEXT COLLATE "C" NOT NULL,
    -- 'c' conversation, 'a' agent, 'm' model, 'p' prompt
    dimension        TEXT COLLATE "C" NOT NULL,
    -- the members' values, sorted ('' for events without one); then each member's sums
    value            TEXT[] COLLATE "C" NOT NULL,
    input_tokens     BIGINT[] NOT NULL,
    output_tokens    BIGINT[] NOT NULL,
    total_tokens     BIGINT[] NOT NULL,
    cost_picos       BIGINT[] NOT NULL,
    messages         BIGINT[] NOT NULL,
    last_activity_at BIGINT[] NOT NULL,
    PRIMARY KEY (account_id, day, dimension)
);
CREATE INDEX usage_day_members_by_day ON usage_day_members (day);

INSERT INTO usage_day_members
SELECT account_id, day, dimension,
       array_agg(value ORDER BY value), array_agg(input_tokens ORDER BY value),
       array_agg(output_tokens ORDER BY value), array_agg(total_tokens ORDER BY value),
       array_agg(cost_picos ORDER BY value), array_agg(messages ORDER BY value),
       array_agg(last_activity_at ORDER BY value)
FROM usage_day_member GROUP BY account_id, day, dimension;

DROP TABLE usage_day_member;

-- The arrays are unnested in the select list, side by side (they have the same length): a
-- lateral unnest(...) in FROM materialized each packed row's members first, and read everyone's
-- 30 days of distinct counts in 0.6-0.9 s against 0.25 s this way.
CREATE VIEW usage_day_member AS
SELECT account_id, day, dimension,
       unnest(value) AS value, unnest(input_tokens) AS input_tokens,
       unnest(output_tokens) AS output_tokens, unnest(total_tokens) AS total_tokens,
       unnest(cost_picos) AS cost_picos, unnest(messages) AS messages,
       unnest(last_activity_at) AS last_activity_at
FROM usage_day_members;
