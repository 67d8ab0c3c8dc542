-- Wallets, payments, the ledger, idempotency keys, the outbox and the result inbox.
-- The database is the last line of defence: balances cannot go negative and a payment's
-- status can only be one of the three the API knows.

CREATE TABLE wallets (
    id          uuid PRIMARY KEY,
    owner_id    text        NOT NULL CHECK (length(owner_id) BETWEEN 1 AND 255),
    currency    char(3)     NOT NULL,
    available   bigint      NOT NULL DEFAULT 0,
    held        bigint      NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT wallets_available_non_negative CHECK (available >= 0),
    CONSTRAINT wallets_held_non_negative CHECK (held >= 0)
);
CREATE INDEX wallets_owner_idx ON wallets (owner_id, created_at DESC);

CREATE TABLE payments (
    id                uuid PRIMARY KEY,
    wallet_id         uuid        NOT NULL REFERENCES wallets (id),
    owner_id          text        NOT NULL,
    amount            bigint      NOT NULL CHECK (amount > 0),
    currency          char(3)     NOT NULL,
    merchant_id       text        NOT NULL,
    description       text,
    status            text        NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'succeeded', 'failed')),
    failure_reason    text,
    gateway_reference text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    finalized_at      timestamptz,
    CONSTRAINT payments_terminal_state_consistent CHECK (
        (status = 'pending' AND finalized_at IS NULL AND failure_reason IS NULL)
        OR (status = 'succeeded' AND finalized_at IS NOT NULL AND failure_reason IS NULL)
        OR (status = 'failed' AND finalized_at IS NOT NULL AND failure_reason IS NOT NULL)
    )
);
CREATE INDEX payments_wallet_idx ON payments (wallet_id, created_at DESC, id DESC);
CREATE INDEX payments_owner_idx ON payments (owner_id, created_at DESC, id DESC);
CREATE INDEX payments_created_idx ON payments (created_at DESC, id DESC);
CREATE INDEX payments_pending_idx ON payments (created_at) WHERE status = 'pending';

-- Append-only: one row per change of a balance, with the balances after it.
CREATE TABLE ledger_entries (
    seq             bigserial PRIMARY KEY,
    id              uuid        NOT NULL UNIQUE,
    wallet_id       uuid        NOT NULL REFERENCES wallets (id),
    kind            text        NOT NULL CHECK (kind IN ('deposit', 'hold', 'capture', 'release')),
    amount          bigint      NOT NULL CHECK (amount > 0),
    payment_id      uuid REFERENCES payments (id),
    reference       text,
    available_after bigint      NOT NULL CHECK (available_after >= 0),
    held_after      bigint      NOT NULL CHECK (held_after >= 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ledger_payment_kinds CHECK ((kind = 'deposit') = (payment_id IS NULL))
);
CREATE INDEX ledger_wallet_idx ON ledger_entries (wallet_id, seq DESC);
-- At most one hold, one capture and one release per payment, whatever the code does.
CREATE UNIQUE INDEX ledger_one_entry_per_payment_kind ON ledger_entries (payment_id, kind)
    WHERE payment_id IS NOT NULL;

CREATE TABLE idempotency_keys (
    principal       text        NOT NULL,
    key             text        NOT NULL,
    fingerprint     text        NOT NULL,
    response_status smallint    NOT NULL,
    response_body   jsonb       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    PRIMARY KEY (principal, key)
);
CREATE INDEX idempotency_keys_expiry_idx ON idempotency_keys (expires_at);

CREATE TABLE outbox (
    id            uuid PRIMARY KEY,
    aggregate_id  uuid        NOT NULL,
    event_type    text        NOT NULL,
    payload       jsonb       NOT NULL,
    traceparent   text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz,
    attempts      integer     NOT NULL DEFAULT 0,
    last_error    text
);
CREATE INDEX outbox_unpublished_idx ON outbox (created_at) WHERE published_at IS NULL;
CREATE INDEX outbox_published_idx ON outbox (published_at) WHERE published_at IS NOT NULL;

-- The result consumer's inbox: an event id here has been applied, so a redelivery is a no-op.
CREATE TABLE processed_events (
    event_id     uuid PRIMARY KEY,
    payment_id   uuid        NOT NULL,
    outcome      text        NOT NULL,
    applied      boolean     NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now()
);
