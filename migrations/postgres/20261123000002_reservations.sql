-- Tokens held for model calls in flight. account.tokens_reserved is always the sum of an
-- account's rows here; a row is deleted when its call settles or is released, or when it expires
-- (a server that died mid-call does not lock tokens away for ever).

CREATE TABLE reservation (
    reservation_id TEXT    NOT NULL PRIMARY KEY,
    account_id     TEXT    NOT NULL REFERENCES account (account_id) ON DELETE CASCADE,
    tokens         BIGINT  NOT NULL CHECK (tokens > 0),
    created_at     BIGINT  NOT NULL,
    expires_at     BIGINT  NOT NULL
);
CREATE INDEX reservation_account ON reservation (account_id);
CREATE INDEX reservation_expiry ON reservation (expires_at);
