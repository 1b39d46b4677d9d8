-- Alert notifications also go to webhook endpoints: each outbox row says which channel
-- delivers it; for a webhook, `recipients` names the endpoint and `body_text` holds the
-- alert as JSON.
ALTER TABLE outbox ADD COLUMN channel TEXT NOT NULL DEFAULT 'email';
