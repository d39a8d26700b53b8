-- Members (conversations, agents, models, prompts of a rollup) are kept per day only: a week's or
-- a month's distinct counts are the distinct members of its days. The week and month members go;
-- the counts stored on the rollups stay as they are (they were exact).
DELETE FROM usage_rollup_member WHERE period <> 'day';
