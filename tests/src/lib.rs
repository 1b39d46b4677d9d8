//! Test harness shared by the suites in `tests/tests/` (one test binary, `tests/tests/main.rs`),
//! one module per concern: `db`, `server`, `proxy`, `mdp`, `smtp`, `fakes`, `fixtures`.
//!
//! - `TestDb`: a fresh database per test, on SQLite (a temp file) or PostgreSQL (a database
//!   created on the server at `TELLTALE_TEST_DATABASE_URL` and dropped afterwards), so tests
//!   share nothing and run in parallel.
//! - `TestServer`: the real `telltale` binary, started on a free port with its logs captured.
//! - `TcpProxy`: a loopback proxy that can cut and restore a connection to the database.
//! - `load`: a closed-loop HTTP load generator for the benchmarks.
//! - `WebhookReceiver`: an alert webhook receiver that verifies Standard Webhooks signatures.
//! - `both_backends!`: turns one async test function into a SQLite test and a PostgreSQL test.

mod db;
mod fakes;
mod fixtures;
pub mod load;
mod mdp;
mod proxy;
mod server;
mod smtp;
pub mod webhook_receiver;

pub use db::*;
pub use fakes::*;
pub use fixtures::*;
pub use mdp::*;
pub use proxy::*;
pub use server::*;
pub use smtp::*;
pub use webhook_receiver::{Received, WEBHOOK_SECRET, WebhookReceiver};

pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// A fixed key so tests can decrypt what the binary stored.
pub const TEST_SECRET_KEY: &str = "5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e";
/// Every test server starts with this admin (configured as the first admin)…
pub const TEST_ADMIN_EMAIL: &str = "admin@example.com";
pub const TEST_ADMIN_PASSWORD: &str = "CANARY-admin-password";
/// …and this API token for it, which `get_json`, `post_with_headers` and `api_client` send.
pub const TEST_API_TOKEN: &str = "CANARY-api-token-0123456789abcdef";

/// Added to a test server's environment, unsets the configured admin and API token: a blank
/// install, as `cargo run` on a fresh machine starts.
pub const FRESH_INSTALL: &[(&str, &str)] = &[
    ("TELLTALE_ADMIN_EMAIL", ""),
    ("TELLTALE_ADMIN_PASSWORD", ""),
    ("TELLTALE_API_TOKEN", ""),
];

/// Every secret a test hands Telltale contains `CANARY` (or is `TEST_SECRET_KEY`), so one
/// check finds any of them where none may appear. The harness applies it to everything a user
/// could see: each test server's whole log (when the server is dropped), `/metrics`, every
/// response read through `get_json`/`post_with_headers`, and every email `SmtpSink` received.
pub fn assert_no_canary(place: &str, text: &str) {
    for canary in ["CANARY", TEST_SECRET_KEY] {
        if let Some(at) = text.find(canary) {
            let start = text[..at].char_indices().rev().nth(120).map_or(0, |(i, _)| i);
            let end = text[at..]
                .char_indices()
                .nth(120)
                .map_or(text.len(), |(i, _)| at + i);
            panic!("a secret leaked into {place}: …{}…", &text[start..end]);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// `sqlite` or `postgres`, as the benchmarks' `--backend` takes and prints it.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = String;

    fn from_str(name: &str) -> Result<Backend, String> {
        match name {
            "sqlite" => Ok(Backend::Sqlite),
            "postgres" => Ok(Backend::Postgres),
            other => Err(format!("unknown backend {other}")),
        }
    }
}

/// Generates `mod NAME { sqlite, postgres }` tests from `async fn NAME(backend: Backend)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::Backend::Sqlite).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::Backend::Postgres).await
                }
            }
        )+
    };
}
