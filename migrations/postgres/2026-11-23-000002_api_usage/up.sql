-- Requests made to a third-party API per UTC day, so a plan's daily quota is respected by
-- every replica together (incremented atomically before each request).
CREATE TABLE api_usage (
    provider TEXT NOT NULL,
    day TEXT NOT NULL,
    requests BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (provider, day)
);
