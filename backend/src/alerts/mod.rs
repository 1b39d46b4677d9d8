//! Alerting: rules over the signals the other loops write (`evaluate.rs`), alerts with a
//! compare-and-set lifecycle in the database, and emails through the outbox (`email.rs`).

pub mod email;
pub mod evaluate;
