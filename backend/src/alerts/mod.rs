//! Alerting: notifications go out as emails through the outbox (`email.rs`). The alert rules
//! and their lifecycle build on this.

pub mod email;
