//! Alerting: where notifications go (`channels.rs`: config and Settings → Notifications
//! merged), rules over the signals the other loops write (`rules.rs`, one function per
//! rule), their evaluation into alerts (`evaluate.rs`), alerts with a
//! compare-and-set lifecycle in the database, and emails through the outbox (`email.rs`),
//! rendered from the templates in `backend/templates/email/` (`templates.rs`), and signed
//! JSON to webhook endpoints through the same outbox (`webhook.rs`).

pub mod channels;
pub mod email;
pub mod evaluate;
pub mod rules;
pub mod settings;
pub mod templates;
pub mod webhook;
