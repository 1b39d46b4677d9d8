-- Each consent callback's state is used once, across replicas: the first request that brings
-- it back claims its row and exchanges the code; a reload, the page's live refresh or a replay
-- finds the row and is shown what happened, and the platform never sees the code twice.
CREATE TABLE consent_callbacks (
    state_hash TEXT PRIMARY KEY,
    connection_id INTEGER NOT NULL,
    used_at TEXT NOT NULL,
    -- NULL while the exchange runs.
    succeeded BOOLEAN,
    message TEXT
);
CREATE INDEX consent_callbacks_used_at ON consent_callbacks (used_at);
