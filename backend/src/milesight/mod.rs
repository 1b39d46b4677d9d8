//! Milesight Development Platform: webhook intake and device state.

pub mod intake;
pub mod webhook;
