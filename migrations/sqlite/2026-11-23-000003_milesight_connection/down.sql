UPDATE connections SET provider = 'milesight', name = 'default'
WHERE provider = 'oauth2_client_credentials' AND name = 'milesight';
UPDATE refresh_log SET provider = 'milesight'
WHERE provider = 'oauth2_client_credentials'
  AND connection_id IN (SELECT id FROM connections WHERE provider = 'milesight');
