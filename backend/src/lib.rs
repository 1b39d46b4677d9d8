#![recursion_limit = "256"]
//! Telltale: receives Milesight webhooks, keeps third-party tokens fresh, and tells on-call
//! when something stops. See `docs/ARCHITECTURE.md` for how the modules fit together.

pub mod alerts;
pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod metrics;
pub mod milesight;
pub mod polling;
pub mod present;
pub mod providers;
pub mod redact;
pub mod scheduler;
pub mod storage;
pub mod telemetry;
pub mod tokens;
pub mod web;
