//! Every end-to-end and storage suite, one module each, in one test binary: the harness and
//! the product are linked once instead of once per suite. `cargo test -p telltale-e2e SUITE::`
//! runs one suite (e.g. `alerts::`).

mod alert_emails;
mod alert_webhooks;
mod alerts;
mod api;
mod auth;
mod authz;
mod browser;
mod client_credentials;
mod connect;
mod connections_cli;
mod email;
mod meta;
mod metrics;
mod milesight_inventory;
mod milesight_settings;
mod milesight_token;
mod notifications;
mod observability;
mod pages;
mod password_login;
mod polling;
mod polling_api;
mod prometheus_rules;
mod replicas;
mod scheduler_api;
mod schema;
mod server;
mod setup;
mod staff;
mod storage;
mod thingsboard;
mod token_engine;
mod tokens_api;
mod webhooks;
