-- retryopt store, version 1 (PostgreSQL). Times are microseconds since the Unix epoch, UTC.
CREATE TABLE decisions (
    decision_id TEXT PRIMARY KEY,
    charge_id TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    decided_at BIGINT NOT NULL,
    logged_at BIGINT NOT NULL,
    state_hash TEXT NOT NULL,
    idempotency_key TEXT,
    request TEXT NOT NULL,
    action TEXT NOT NULL,
    retry_at BIGINT,
    success_probability DOUBLE PRECISION,
    alternatives TEXT NOT NULL,
    policy TEXT NOT NULL,
    model_version TEXT,
    exploration TEXT NOT NULL,
    propensity DOUBLE PRECISION NOT NULL,
    response TEXT NOT NULL
);
CREATE UNIQUE INDEX decisions_idempotency_key ON decisions (idempotency_key);
CREATE UNIQUE INDEX decisions_charge_state ON decisions (charge_id, state_hash);
CREATE INDEX decisions_charge_time ON decisions (charge_id, decided_at);
CREATE INDEX decisions_decided_at ON decisions (decided_at);

CREATE TABLE charges (
    charge_id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    charge TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX charges_customer ON charges (customer_id);

CREATE TABLE outcomes (
    charge_id TEXT NOT NULL,
    attempted_at BIGINT NOT NULL,
    customer_id TEXT,
    outcome TEXT NOT NULL,
    decision_id TEXT,
    known_charge SMALLINT NOT NULL,
    report TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (charge_id, attempted_at)
);
CREATE INDEX outcomes_customer_time ON outcomes (customer_id, attempted_at);
CREATE INDEX outcomes_attempted_at ON outcomes (attempted_at);
