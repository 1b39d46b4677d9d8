DROP TABLE consent_callbacks;
