-- Model calls: cache and reasoning token counts, and what each use cost.
-- Costs are integer pico-dollars (10^-12 USD), computed at the price in effect when the use
-- happened, so a later price change never rewrites the past. No floating point in money.

ALTER TABLE usage_event ADD COLUMN cached_tokens      INTEGER NOT NULL DEFAULT 0 CHECK (cached_tokens >= 0);
ALTER TABLE usage_event ADD COLUMN cache_write_tokens INTEGER NOT NULL DEFAULT 0 CHECK (cache_write_tokens >= 0);
ALTER TABLE usage_event ADD COLUMN reasoning_tokens   INTEGER NOT NULL DEFAULT 0 CHECK (reasoning_tokens >= 0);
ALTER TABLE usage_event ADD COLUMN cost_picos         INTEGER NOT NULL DEFAULT 0 CHECK (cost_picos >= 0);

-- Never resets: always the sum of this account's usage_event.cost_picos.
ALTER TABLE account ADD COLUMN lifetime_cost_picos INTEGER NOT NULL DEFAULT 0 CHECK (lifetime_cost_picos >= 0);
