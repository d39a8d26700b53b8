-- The day members' index by day is by day alone: with the dimension in it, each member
-- written cost a crowded insert (few distinct keys, long posting lists) about as dear as the
-- row itself, the larger part of a backfill's time. Readers of a day range filter the
-- dimension on the rows the day finds.
DROP INDEX usage_day_member_by_day;
CREATE INDEX usage_day_member_by_day ON usage_day_member (day);
