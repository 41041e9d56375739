-- Events the read model could not store (e.g. a value Postgres refuses). The projector records
-- them here and moves on, instead of stopping every tenant's projection on one bad event.

CREATE TABLE projection_quarantine (
    seq            bigint PRIMARY KEY,
    subject        text        NOT NULL,
    error          text        NOT NULL,
    quarantined_at timestamptz NOT NULL DEFAULT now()
);
