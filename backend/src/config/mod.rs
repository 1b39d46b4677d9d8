//! Configuration: built-in defaults, overlaid by an optional TOML file, overlaid by
//! environment variables, then validated. Every key is declared once, in a `settings!` table
//! beside the code that uses it (the top-level keys here); the typed sections, the masked
//! `check-config` output and the README's configuration table all come from those tables.
//! Every error names the key (and the environment variable) and says what is expected;
//! secrets are never echoed back.

pub mod setting;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;

use crate::alerts::settings::{AlertsConfig, EmailConfig};
use crate::auth::settings::AuthConfig;
use crate::milesight::settings::MilesightConfig;
use crate::polling::settings::PollingConfig;
use crate::scheduler::settings::SchedulerConfig;
use crate::storage::DatabaseTarget;
use crate::storage::settings::DatabaseConfig;
use crate::tokens::settings::TokensConfig;
use setting::{FileType, Kind, Source, flag, list, parsed, parsed_secret, secret, secs, settings};

pub use crate::milesight::settings::{MilesightApi, WebhookConfig};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/telltale.db";

settings! {
    /// The effective configuration. Its `Debug` output is the masked TOML, so keys never leak.
    pub struct Config in "" {
        /// HTTP address and port.
        listen: SocketAddr = parsed(DEFAULT_LISTEN, "an address and port", parse_listen), env "TELLTALE_LISTEN";
        /// `sqlite://PATH` or `postgres://user:pass@host:port/db` (shown with its password masked).
        database_url: DatabaseTarget = database_url(), env "DATABASE_URL";
        /// Where the generated key file lives.
        data_dir: PathBuf = directory("data"), env "TELLTALE_DATA_DIR";
        /// Encrypts secrets at rest (generate one with `telltale gen-key`).
        secret_key: Option<[u8; 32]> = parsed_secret("64 hexadecimal characters", crate::crypto::parse_key)
            .documented_default("a key file in `data_dir`"), env "TELLTALE_SECRET_KEY";
        /// Old keys still accepted for decryption during a key rotation (comma-separated in the environment).
        previous_secret_keys: Vec<[u8; 32]> = list("64-hexadecimal-character keys", parse_previous_key, |_| setting::masked(true))
            .secret(), env "TELLTALE_SECRET_KEY_PREVIOUS";
        /// Log line format.
        log_format: LogFormat = parsed("text", "text or json", LogFormat::parse), env "LOG_FORMAT";
        /// How long in-flight requests may take to finish on shutdown.
        shutdown_timeout_secs: Duration = secs(30, 1..=3600), env "TELLTALE_SHUTDOWN_TIMEOUT_SECS";
        /// Enables `/api/cron/*` (sent as `Authorization: Bearer …`); they answer 404 without one.
        cron_secret: Option<SecretString> = secret(16), env "CRON_SECRET";
        /// Serve `POST /bench/discard` (reads the body, answers 200): the ceiling the ingest
        /// benchmark compares against; leave off in production.
        bench_discard_route: bool = flag(false), env "TELLTALE_BENCH_DISCARD_ROUTE";
    }
    sections {
        database: DatabaseConfig,
        milesight: MilesightConfig,
        scheduler: SchedulerConfig,
        tokens: TokensConfig,
        polling: PollingConfig,
        email: EmailConfig,
        alerts: AlertsConfig,
        auth: AuthConfig,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    fn parse(text: &str) -> Result<LogFormat, String> {
        match text.to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("expected \"text\" or \"json\", got {other:?}")),
        }
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("expected an address and port such as 127.0.0.1:8080, got {text:?}"))
}

fn parse_previous_key(text: &str) -> Result<[u8; 32], String> {
    crate::crypto::parse_key(text).map_err(|m| format!("each key: {m}"))
}

/// The database URL: parsed into its backend, shown with any password masked. Errors describe
/// the URL without repeating it, since it may carry a password.
fn database_url() -> Kind<DatabaseTarget> {
    Kind::new(
        FileType::String,
        DatabaseTarget::Sqlite("data/telltale.db".into()),
        DEFAULT_DATABASE_URL,
        "a postgres:// or sqlite:// URL",
        DatabaseTarget::parse,
        |target| {
            format!(
                "{:?}  # backend: {}",
                masked_database_url(target),
                target.backend_name()
            )
        },
    )
}

fn directory(default: &str) -> Kind<PathBuf> {
    Kind::new(
        FileType::String,
        PathBuf::from(default),
        default,
        "a directory",
        |text| Ok(PathBuf::from(text)),
        |path| format!("{:?}", path.display().to_string()),
    )
}

/// A configuration problem, reported with exit status 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {key}: {message}")]
pub struct ConfigError {
    /// The key as written in the file, with the environment variable that sets it, e.g.
    /// `listen (TELLTALE_LISTEN)`.
    pub key: String,
    pub message: String,
}

/// Environment lookup, injectable so tests never touch the real process environment.
pub trait Env {
    fn get(&self, name: &str) -> Option<String>;
}

pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl<const N: usize> Env for [(&str, &str); N] {
    fn get(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    }
}

impl Config {
    /// `alerts.public_url` when it was set, not defaulted from `listen` (which may say port 0
    /// or 0.0.0.0, so callers building links for people look elsewhere then).
    pub fn configured_public_url(&self) -> Option<&str> {
        Some(self.alerts.public_url.as_str()).filter(|url| *url != format!("http://{}", self.listen))
    }

    /// Every job schedule setting with its value (normalised to six fields when read).
    pub fn schedules(&self) -> Vec<(&'static str, &str)> {
        vec![
            ("tokens.sweep_schedule", &self.tokens.sweep_schedule),
            ("polling.sweep_schedule", &self.polling.sweep_schedule),
            ("polling.retention_schedule", &self.polling.retention_schedule),
            (
                "milesight.device_check_schedule",
                &self.milesight.device_check_schedule,
            ),
            ("milesight.retention_schedule", &self.milesight.retention_schedule),
            ("milesight.inventory_schedule", &self.milesight.inventory_schedule),
            ("email.outbox_schedule", &self.email.outbox_schedule),
            ("alerts.evaluation_schedule", &self.alerts.evaluation_schedule),
        ]
    }

    /// Loads the configuration: the file (if a path is given) overlaid by the environment.
    pub fn load(file: Option<&Path>, env: &impl Env) -> Result<Config, ConfigError> {
        match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
                    key: "--config (TELLTALE_CONFIG)".into(),
                    message: format!("cannot read {}: {e}", path.display()),
                })?;
                Config::parse(&text, path, env)
            }
            None => Config::resolve(&toml::Table::new(), Path::new("(none)"), env),
        }
    }

    /// Parses configuration from TOML text (for tests and tools).
    pub fn from_toml(text: &str, env: &impl Env) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("<inline>"), env)
    }

    fn parse(text: &str, path: &Path, env: &impl Env) -> Result<Config, ConfigError> {
        let table = text.parse::<toml::Table>().map_err(|e| file_error(path, &e))?;
        Config::resolve(&table, path, env)
    }

    fn resolve(file: &toml::Table, origin: &Path, env: &impl Env) -> Result<Config, ConfigError> {
        let mut config = Config::read(&Source { file, origin, env })?;
        // Checks across keys live beside the code that uses them.
        config.database.resolve(&config.database_url);
        config.milesight.validate()?;
        config.polling.validate()?;
        config.alerts.resolve(config.listen);
        config.alerts.validate()?;
        config.auth.validate(&config.alerts.public_url)?;
        Ok(config)
    }

    /// The database URL with any password replaced by `****`.
    pub fn masked_database_url(&self) -> String {
        masked_database_url(&self.database_url)
    }

    /// The effective configuration as TOML, secrets masked; what `check-config` prints.
    pub fn to_masked_toml(&self) -> String {
        let mut out = String::new();
        self.write_masked(&mut out);
        out
    }

    /// The configuration table the README carries: one row per key.
    pub fn documentation_table() -> String {
        let mut out = String::from(
            "| file key | environment variable | default | accepts | meaning |\n|---|---|---|---|---|\n",
        );
        for key in Config::describe() {
            let env = key.env.map_or("(file only)".to_owned(), |e| format!("`{e}`"));
            let default = match key.default.as_str() {
                "" => "(empty)".to_owned(),
                "none" => "none".to_owned(),
                d if d.contains('`') => d.to_owned(),
                d => format!("`{d}`"),
            };
            let accepts = if key.secret {
                format!("{} (secret: masked, never logged)", key.accepts)
            } else {
                key.accepts
            };
            out.push_str(&format!(
                "| `{}` | {env} | {default} | {accepts} | {} |\n",
                key.key,
                key.doc.replace('|', "\\|")
            ));
        }
        out
    }
}

fn masked_database_url(target: &DatabaseTarget) -> String {
    match target {
        DatabaseTarget::Postgres(url) => mask_url_password(url),
        DatabaseTarget::Sqlite(path) => format!("sqlite://{path}"),
    }
}

fn file_error(path: &Path, err: &toml::de::Error) -> ConfigError {
    ConfigError {
        key: format!("config file {}", path.display()),
        message: err.message().to_owned()
            + &err
                .span()
                .map(|s| format!(" (at byte {})", s.start))
                .unwrap_or_default(),
    }
}

/// Source names appear in URLs and metric labels, so they are kept short and plain.
pub fn valid_source_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Replaces the password in `scheme://user:password@host/...` with `****`.
pub fn mask_url_password(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("****"));
            parsed.to_string()
        }
        Ok(_) => raw.to_owned(),
        // Unparseable: show only the scheme rather than risk echoing a secret.
        Err(_) => raw
            .split("://")
            .next()
            .map(|s| format!("{s}://…"))
            .unwrap_or_default(),
    }
}

/// An email address as lettre accepts it (`a@x.com` or `Name <a@x.com>`).
pub fn check_mailbox(address: &str) -> Result<(), String> {
    address
        .parse::<lettre::message::Mailbox>()
        .map(|_| ())
        .map_err(|_| format!("{address:?} is not an email address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_ENV: [(&str, &str); 0] = [];

    #[test]
    fn defaults_need_no_file_and_no_environment() {
        let config = Config::load(None, &NO_ENV).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(
            config.database_url,
            DatabaseTarget::Sqlite("data/telltale.db".into())
        );
        assert_eq!(config.log_format, LogFormat::Text);
        assert_eq!(config.database.max_connections, 16);
        assert_eq!(config.database.ingest_writers, Some(1), "one writer on SQLite");
    }

    #[test]
    fn every_default_fits_its_own_bounds() {
        // Each documented default, fed back as if an operator had written it, is accepted.
        let config = Config::load(None, &NO_ENV).unwrap();
        let reparsed = Config::from_toml(&config.to_masked_toml().replace("\"********\"", "\"\""), &NO_ENV);
        assert!(reparsed.is_ok(), "{reparsed:?}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let toml = "listen = \"127.0.0.1:9000\"\n[database]\nmax_connections = 4\n";
        let env = [("TELLTALE_LISTEN", "0.0.0.0:7000"), ("LOG_FORMAT", "JSON")];
        let config = Config::from_toml(toml, &env).unwrap();
        assert_eq!(config.listen.to_string(), "0.0.0.0:7000");
        assert_eq!(config.database.max_connections, 4);
        assert_eq!(config.log_format, LogFormat::Json);
    }

    #[test]
    fn errors_name_the_key_and_the_expectation() {
        let err = Config::from_toml("", &[("TELLTALE_LISTEN", "nope")]).unwrap_err();
        assert_eq!(err.key, "listen (TELLTALE_LISTEN)");
        assert!(err.message.contains("127.0.0.1:8080"), "{}", err.message);

        let err = Config::from_toml("", &[("DATABASE_URL", "mysql://u:hunter2@h/db")]).unwrap_err();
        assert_eq!(err.key, "database_url (DATABASE_URL)");
        assert!(!err.to_string().contains("hunter2"));

        let err = Config::from_toml("[database]\nmax_connections = 0\n", &NO_ENV).unwrap_err();
        assert_eq!(err.key, "database.max_connections (TELLTALE_DB_MAX_CONNECTIONS)");
        assert_eq!(err.message, "expected a number from 1 to 1000, got 0");

        let err = Config::from_toml("[database]\nmax_connections = \"many\"\n", &NO_ENV).unwrap_err();
        assert!(err.message.contains("invalid type"), "{err}");

        let err = Config::from_toml("listen_typo = 1\n", &NO_ENV).unwrap_err();
        assert!(err.message.contains("listen_typo"), "{}", err.message);
        let err = Config::from_toml("[tokens]\nconcurency = 1\n", &NO_ENV).unwrap_err();
        assert!(err.message.contains("tokens.concurency"), "{}", err.message);

        let err = Config::from_toml("", &[("TELLTALE_SECRET_KEY", "short")]).unwrap_err();
        assert_eq!(err.key, "secret_key (TELLTALE_SECRET_KEY)");
        assert!(!err.to_string().contains("short"));
    }

    #[test]
    fn webhooks_from_file_and_default_secret_from_environment() {
        let toml = "[[milesight.webhooks]]\nuuid = \"u-1\"\nsecret = \"CANARY-1\"\nprevious_secret = \"CANARY-0\"\nsource = \"site-a\"\n";
        let env = [
            ("MILESIGHT_WEBHOOK_SECRET", "CANARY-2"),
            ("MILESIGHT_WEBHOOK_PREVIOUS_SECRET", "CANARY-3"),
        ];
        let config = Config::from_toml(toml, &env).unwrap();
        let hooks = &config.milesight.webhooks;
        assert_eq!(hooks.len(), 2);
        assert_eq!(
            (hooks[0].uuid.as_deref(), hooks[0].source.as_str()),
            (Some("u-1"), "site-a")
        );
        assert_eq!(
            (hooks[1].uuid.as_deref(), hooks[1].source.as_str()),
            (None, "default")
        );
        assert!(hooks.iter().all(|h| h.previous_secret.is_some()));
        let shown = config.to_masked_toml();
        assert!(!shown.contains("CANARY"), "{shown}");
        assert!(shown.contains("source = \"site-a\""), "{shown}");
        assert!(shown.contains("previous_secret = \"********\""), "{shown}");
        let alone = Config::from_toml("", &[("MILESIGHT_WEBHOOK_PREVIOUS_SECRET", "x")]).unwrap_err();
        assert!(alone.key.contains("webhook_previous_secret"), "{alone}");

        let bad = "[[milesight.webhooks]]\nuuid = \"u\"\nsecret = \"s\"\nsource = \"no spaces\"\n";
        let err = Config::from_toml(bad, &NO_ENV).unwrap_err();
        assert!(err.key.starts_with("milesight.webhooks"), "{err}");
        assert!(err.message.contains("entry 1"), "{err}");
    }

    #[test]
    fn schedules_and_time_zone_are_validated() {
        let config = Config::from_toml("[scheduler]\ntimezone = \"Europe/Berlin\"\n", &NO_ENV).unwrap();
        assert_eq!(config.scheduler.timezone.name(), "Europe/Berlin");
        assert_eq!(config.milesight.device_check_schedule, "0 * * * * *");
        // Standard crontab (five fields, as the original scripts wrote it) is kept with second 0.
        let config = Config::from_toml(
            "[tokens]\nsweep_schedule = \"*/30 * * * *\"\n",
            &[("MILESIGHT_RETENTION_SCHEDULE", "30 3 * * 1-5")],
        )
        .unwrap();
        assert_eq!(config.tokens.sweep_schedule, "0 */30 * * * *");
        assert_eq!(config.milesight.retention_schedule, "0 30 3 * * 1-5");
        let err = Config::from_toml("", &[("MILESIGHT_RETENTION_SCHEDULE", "3 * * *")]).unwrap_err();
        assert_eq!(
            err.key,
            "milesight.retention_schedule (MILESIGHT_RETENTION_SCHEDULE)"
        );
        assert!(err.message.contains("expected five as in crontab"), "{err}");
        let err = Config::from_toml("", &[("TELLTALE_TOKEN_SWEEP_SCHEDULE", "61 * * * *")]).unwrap_err();
        assert!(
            err.message.contains("\"61 * * * *\""),
            "names what was given: {err}"
        );
        let err = Config::from_toml("", &[("TELLTALE_SCHEDULER_TIMEZONE", "Mars/Olympus")]).unwrap_err();
        assert_eq!(err.key, "scheduler.timezone (TELLTALE_SCHEDULER_TIMEZONE)");
    }

    #[test]
    fn milesight_api_needs_all_three_settings() {
        let env = [
            ("MILESIGHT_BASE_URL", "https://eu-openapi.milesight.com/"),
            ("MILESIGHT_CLIENT_ID", "cid"),
            ("MILESIGHT_CLIENT_SECRET", "CANARY-client-secret"),
        ];
        let config = Config::from_toml("", &env).unwrap();
        let api = config.milesight.api().unwrap();
        assert_eq!(api.base_url, "https://eu-openapi.milesight.com");
        assert!(!config.to_masked_toml().contains("CANARY"));
        assert!(Config::from_toml("", &NO_ENV).unwrap().milesight.api().is_none());
        let err = Config::from_toml("", &[env[0], env[1]]).unwrap_err();
        assert_eq!(err.key, "milesight.client_secret (MILESIGHT_CLIENT_SECRET)");
        let err = Config::from_toml("", &[("MILESIGHT_BASE_URL", "ftp://x"), env[1], env[2]]).unwrap_err();
        assert_eq!(err.key, "milesight.base_url (MILESIGHT_BASE_URL)");
    }

    #[test]
    fn derived_defaults_follow_the_keys_they_come_from() {
        let env = [
            ("DATABASE_URL", "postgres://app@db/telltale"),
            ("TELLTALE_PUBLIC_URL", "https://telltale.example.com/"),
        ];
        let config = Config::from_toml("", &env).unwrap();
        assert_eq!(
            config.database.ingest_writers,
            Some(4),
            "four writers on PostgreSQL"
        );
        assert_eq!(config.alerts.public_url, "https://telltale.example.com");
        assert_eq!(
            config.auth.secure_cookies,
            Some(true),
            "https public URL means secure cookies"
        );
        let local = Config::from_toml("listen = \"127.0.0.1:9999\"", &NO_ENV).unwrap();
        assert_eq!(local.alerts.public_url, "http://127.0.0.1:9999");
        assert_eq!(local.auth.secure_cookies, Some(false));
    }

    #[test]
    fn masked_output_hides_every_secret() {
        let key = "ab".repeat(32);
        let env = [
            ("DATABASE_URL", "postgres://app:s3cretpw@db.example:5432/telltale"),
            ("TELLTALE_SECRET_KEY", key.as_str()),
            ("SMTP_URL", "smtps://ops:CANARY-smtp@mail.example.com:465"),
            ("TELLTALE_ADMIN_EMAIL", "admin@example.com"),
            ("TELLTALE_ADMIN_PASSWORD", "CANARY-admin-pw"),
            ("TELLTALE_METRICS_TOKEN", "CANARY-metrics-token"),
            ("CRON_SECRET", "CANARY-cron-secret"),
        ];
        let config = Config::from_toml("", &env).unwrap();
        let shown = config.to_masked_toml();
        assert!(
            !shown.contains("s3cretpw") && !shown.contains("CANARY"),
            "{shown}"
        );
        assert!(!shown.contains(&key), "{shown}");
        assert!(
            shown.contains("postgres://app:****@db.example:5432/telltale"),
            "{shown}"
        );
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("s3cretpw") && !debug.contains("171, 171") && !debug.contains("CANARY"),
            "{debug}"
        );
    }

    #[test]
    fn every_key_is_documented_with_a_meaning() {
        let keys = Config::describe();
        assert!(keys.len() > 70, "{} keys", keys.len());
        let undocumented: Vec<&str> = keys
            .iter()
            .filter(|k| k.doc.is_empty())
            .map(|k| k.key.as_str())
            .collect();
        assert!(
            undocumented.is_empty(),
            "keys without a doc comment: {undocumented:?}"
        );
        let secrets: Vec<&str> = keys.iter().filter(|k| k.secret).map(|k| k.key.as_str()).collect();
        assert_eq!(
            secrets,
            [
                "secret_key",
                "previous_secret_keys",
                "cron_secret",
                "milesight.webhook_secret",
                "milesight.webhook_previous_secret",
                "milesight.client_secret",
                "email.smtp_url",
                "alerts.webhook_url",
                "alerts.webhook_secret",
                "auth.admin_password",
                "auth.api_token",
                "auth.metrics_token",
            ],
            "the documentation flags exactly the secrets"
        );
        let mut names: Vec<&str> = keys.iter().map(|k| k.key.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), keys.len(), "a key is declared twice");
    }
}
