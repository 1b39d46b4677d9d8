-- The Milesight OpenAPI token is now an ordinary connection of the refresh engine: provider
-- oauth2_client_credentials with the milesight preset (settings are rewritten at start-up).
UPDATE connections
SET provider = 'oauth2_client_credentials', name = 'milesight', settings = '{"preset":"milesight"}'
WHERE provider = 'milesight';
UPDATE refresh_log SET provider = 'oauth2_client_credentials' WHERE provider = 'milesight';
