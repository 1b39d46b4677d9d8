//! The `telltale` command line. Exit status: 0 success, 1 runtime failure, 2 invalid configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::app::{self, AppState};
use crate::config::{Config, ConfigError, ProcessEnv};
use crate::crypto::{Crypto, KeySource};
use crate::storage::{Db, Role, connections, deliveries, migrate};
use crate::telemetry;

#[derive(Debug, Parser)]
#[command(name = "telltale", version, about = "Webhook-aware device monitoring")]
pub struct Cli {
    /// TOML configuration file; environment variables override its values.
    #[arg(long, global = true, env = "TELLTALE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate {
        /// Only list pending migrations.
        #[arg(long)]
        status: bool,
    },
    /// Validate the configuration and print it with secrets masked.
    CheckConfig,
    /// Print a new random key for TELLTALE_SECRET_KEY.
    GenKey,
    /// Re-encrypt every stored secret with the current key (after moving the old key to
    /// TELLTALE_SECRET_KEY_PREVIOUS).
    RotateKey,
    /// Refresh due connected-platform tokens once and print a table; exits 1 if any failed.
    RefreshTokens {
        /// Show what would be refreshed without calling any provider or changing a token.
        #[arg(long)]
        dry_run: bool,
        /// Only connections of this provider kind.
        #[arg(long)]
        provider: Option<String>,
        /// Only this connection id.
        #[arg(long)]
        connection: Option<i64>,
    },
    /// Poll due connected-platform endpoints once and print a table; exits 1 if any failed.
    Poll {
        /// Show what would be polled without calling any platform or storing anything.
        #[arg(long)]
        dry_run: bool,
        /// Only this platform (spotify, google, github, discord, thingsboard) or provider kind.
        #[arg(long)]
        provider: Option<String>,
        /// Only this connection id.
        #[arg(long)]
        connection: Option<i64>,
    },
    /// Send a test email through the outbox (to the on-call list when no address is given);
    /// exits 1 when the SMTP server did not take it (it stays queued for the service to retry).
    SendTestEmail { to: Vec<String> },
    /// Send a test notification to each alert webhook endpoint (or the one named) through the
    /// outbox; exits 1 when an endpoint did not accept it (it stays queued for the service to
    /// retry).
    SendTestNotification {
        /// Only this endpoint (`default` is `alerts.webhook_url`).
        #[arg(long)]
        endpoint: Option<String>,
    },
    /// Manage connected-platform connections (output never contains a secret).
    Connections {
        #[command(subcommand)]
        action: ConnectionsCommand,
    },
    /// Manage staff users of the web UI and API.
    User {
        #[command(subcommand)]
        action: UserCommand,
    },
    /// Create an API token for a staff user; the token is printed once.
    ApiToken {
        /// The user the token acts as (with that user's role).
        #[arg(long)]
        user: String,
        /// What the token is for (shown in the token list).
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Add a user; the password is read from standard input (one line).
    Add {
        /// Make the user an admin (default: viewer, read only).
        #[arg(long)]
        admin: bool,
        email: String,
    },
    /// List users and their roles.
    List,
}

#[derive(Debug, Subcommand)]
enum ConnectionsCommand {
    /// List every connection with its token status, shortest runway first.
    List,
    /// Show one connection as JSON.
    Show { id: i64 },
    /// Add a connection.
    Add {
        /// The customer or user it belongs to (created when new).
        #[arg(long)]
        account: String,
        /// Provider kind, e.g. oauth2_refresh, thingsboard, password_login.
        #[arg(long)]
        provider: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        base_url: Option<String>,
        /// Non-secret settings as a JSON object, e.g. '{"preset":"spotify"}'.
        #[arg(long)]
        settings: Option<String>,
        /// File (or - for stdin) holding a JSON object with any of credentials, access_token,
        /// refresh_token: secrets stay off the command line and out of shell history.
        #[arg(long, value_name = "FILE")]
        secrets: Option<PathBuf>,
        /// When the pasted access token expires (RFC 3339).
        #[arg(long)]
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// Change a connection; new secrets re-authorise one that needs it.
    Update {
        id: i64,
        /// An empty value clears it.
        #[arg(long)]
        base_url: Option<String>,
        #[arg(long)]
        settings: Option<String>,
        #[arg(long, value_name = "FILE")]
        secrets: Option<PathBuf>,
        #[arg(long)]
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// Stop refreshing a connection (kept, shown as disabled).
    Disable { id: i64 },
    /// Refresh a disabled connection again.
    Enable { id: i64 },
    /// Delete a connection and its tokens.
    Delete { id: i64 },
    /// Forget a connection's stored tokens (credentials and settings stay), so the next
    /// refresh logs in anew.
    ClearToken { id: i64 },
}

/// What `--secrets` files hold.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretsInput {
    credentials: Option<serde_json::Value>,
    access_token: Option<String>,
    refresh_token: Option<String>,
}

/// Each job schedule as it runs (six fields) and its next three runs, as TOML comments.
fn schedule_summary(config: &Config, at: crate::storage::UtcTime) -> String {
    let tz = config.scheduler.timezone;
    let mut out = format!(
        "\n# job schedules as they run (six fields, seconds first) and their next three runs in {tz}\n"
    );
    for (key, expression) in config.schedules() {
        let runs: Vec<String> = crate::scheduler::next_runs(expression, tz, at, 3)
            .iter()
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .collect();
        out.push_str(&format!("# {key} = {expression:?}: {}\n", runs.join(", ")));
    }
    for (target, expression) in &config.polling.schedules {
        let normalised =
            crate::scheduler::normalize_schedule(expression).unwrap_or_else(|_| expression.clone());
        let runs: Vec<String> = crate::scheduler::next_runs(expression, tz, at, 3)
            .iter()
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .collect();
        out.push_str(&format!(
            "# polling.schedules.{target} = {normalised:?}: {}\n",
            runs.join(", ")
        ));
    }
    out
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    if let Command::GenKey = command {
        println!("{}", crate::crypto::generate_key_hex());
        return ExitCode::SUCCESS;
    }
    let config = match Config::load(cli.config.as_deref(), &ProcessEnv) {
        Ok(config) => config,
        Err(err) => return config_failure(&err),
    };
    if let Command::CheckConfig = command {
        println!(
            "# effective configuration (secrets masked)\n{}",
            config.to_masked_toml()
        );
        print!("{}", schedule_summary(&config, crate::storage::now()));
        return ExitCode::SUCCESS;
    }
    telemetry::init(config.log_format);
    // Pages, emails and notifications show local times in the zone jobs are scheduled in.
    crate::present::set_zone(config.scheduler.timezone);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match command {
            Command::Serve => serve(config).await,
            Command::Migrate { status } => run_migrate(&config, status).await,
            Command::RotateKey => rotate_key(config).await,
            Command::RefreshTokens {
                dry_run,
                provider,
                connection,
            } => refresh_tokens(config, dry_run, provider, connection).await,
            Command::Connections { action } => manage_connections(config, action).await,
            Command::SendTestEmail { to } => send_test_email(config, to).await,
            Command::SendTestNotification { endpoint } => send_test_notification(config, endpoint).await,
            Command::User { action } => manage_users(config, action).await,
            Command::ApiToken { user, name } => create_api_token(config, &user, &name).await,
            Command::Poll {
                dry_run,
                provider,
                connection,
            } => poll(config, dry_run, provider, connection).await,
            Command::CheckConfig | Command::GenKey => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "telltale failed");
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn config_failure(err: &ConfigError) -> ExitCode {
    eprintln!("error: {err}");
    ExitCode::from(2)
}

fn load_crypto(config: &Config) -> anyhow::Result<Crypto> {
    let (crypto, source) = Crypto::load_or_create(
        config.secret_key.as_ref(),
        &config.previous_secret_keys,
        &config.data_dir,
    )?;
    match source {
        KeySource::Config => {}
        KeySource::ExistingFile(path) => tracing::warn!(
            path = %path.display(),
            "TELLTALE_SECRET_KEY is not set; using the key file. Set TELLTALE_SECRET_KEY in production"
        ),
        KeySource::GeneratedFile(path) => tracing::warn!(
            path = %path.display(),
            "TELLTALE_SECRET_KEY is not set; generated a new key file. Back it up: without it stored secrets cannot be read"
        ),
    }
    Ok(crypto)
}

/// The state a one-shot command (refresh, poll, connections, test email) works with: the
/// secret key loaded and the schema migrated, as the service would have them.
async fn one_shot_state(config: Config) -> anyhow::Result<AppState> {
    let crypto = load_crypto(&config)?;
    migrate::run(&config.database_url).await?;
    AppState::new(config, crypto)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let crypto = load_crypto(&config)?;
    // Before listening: a refused second server must not look alive to a load balancer.
    let _serving = crate::storage::serve_lock::acquire(&config.database_url)?;
    let listener = std::net::TcpListener::bind(config.listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let state = AppState::new(config, crypto)?;
    app::serve(state, listener, app::shutdown_signal()).await
}

async fn run_migrate(config: &Config, status_only: bool) -> anyhow::Result<()> {
    if status_only {
        let pending = migrate::pending(&config.database_url).await?;
        if pending.is_empty() {
            println!("schema up to date");
        } else {
            println!("{} pending migration(s):", pending.len());
            for name in pending {
                println!("  {name}");
            }
        }
        return Ok(());
    }
    let applied = migrate::run(&config.database_url).await?;
    if applied.is_empty() {
        println!("schema up to date; nothing to apply");
    } else {
        println!("applied {} migration(s): {}", applied.len(), applied.join(", "));
    }
    Ok(())
}

async fn rotate_key(config: Config) -> anyhow::Result<()> {
    let crypto = load_crypto(&config)?;
    migrate::run(&config.database_url).await?;
    let db = Db::open(&config.database_url, &config.database.pool())?;
    let sources = deliveries::reencrypt_secrets(&db, &crypto).await?;
    let connection_values = connections::reencrypt_secrets(&db, &crypto).await?;
    let ui_webhooks = crate::milesight::ui_webhooks::reencrypt_secrets(&db, &crypto).await?;
    let notifications = crate::alerts::channels::reencrypt_secrets(&db, &crypto).await?;
    println!(
        "re-encrypted {} webhook secret(s), {connection_values} connection secret(s) and {notifications} notification secret(s) with key {}",
        sources + ui_webhooks,
        crypto.current_key_id()
    );
    println!("once this succeeded, remove the old key from TELLTALE_SECRET_KEY_PREVIOUS");
    db.close();
    Ok(())
}

async fn refresh_tokens(
    config: Config,
    dry_run: bool,
    provider: Option<String>,
    connection: Option<i64>,
) -> anyhow::Result<()> {
    let state = one_shot_state(config).await?;
    let request = crate::tokens::SweepRequest {
        trigger: crate::storage::RefreshTrigger::Cli,
        actor: std::env::var("USER").unwrap_or_else(|_| "cli".into()),
        dry_run,
        provider,
        connection_id: connection,
    };
    let sweep = state.token_engine.sweep(&request, crate::storage::now());
    tokio::pin!(sweep);
    let mut stopped = false;
    let report = tokio::select! {
        report = &mut sweep => report?,
        () = crate::app::shutdown_signal() => {
            // Refreshes under way finish (a rotated refresh token must not be lost), none
            // start, and every claim is given back, so the server refreshes them at once.
            eprintln!("stopping: no more refreshes are started; waiting for those under way (signal again to quit now)");
            state.token_engine.stop_claiming();
            stopped = true;
            tokio::select! {
                report = &mut sweep => report?,
                () = crate::app::shutdown_signal() => {
                    let released = crate::storage::connections::release_all(&state.db, &state.instance).await?;
                    state.db.close();
                    anyhow::bail!("stopped at once; gave back {released} claim(s) on refreshes under way");
                }
            }
        }
    };
    println!(
        "{:<6} {:<16} {:<24} {:<14} {:<27} DETAIL",
        "ID", "PROVIDER", "NAME", "OUTCOME", "EXPIRES AT"
    );
    for r in &report.results {
        println!(
            "{:<6} {:<16} {:<24} {:<14} {:<27} {}",
            r.id,
            r.provider,
            r.name,
            r.outcome,
            r.expires_at.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
            r.detail.as_deref().unwrap_or("")
        );
    }
    println!(
        "{} due, {} refreshed, {} failed{}",
        report.checked,
        report.refreshed,
        report.failed,
        if dry_run {
            " (dry run: nothing changed)"
        } else {
            ""
        }
    );
    state.db.close();
    if stopped {
        anyhow::bail!("stopped before every due connection was refreshed");
    }
    if report.failed > 0 {
        anyhow::bail!("{} refresh(es) failed", report.failed);
    }
    Ok(())
}

fn read_secrets(path: Option<&std::path::Path>) -> anyhow::Result<SecretsInput> {
    use std::io::Read;
    let Some(path) = path else {
        return Ok(SecretsInput::default());
    };
    let mut text = String::new();
    if path.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut text)?;
    } else {
        text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    }
    // serde's message names the field and position, never the value.
    serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "--secrets must be a JSON object with credentials, access_token or refresh_token: {e}"
        )
    })
}

fn parse_settings(text: Option<&str>) -> anyhow::Result<Option<serde_json::Value>> {
    text.map(|t| serde_json::from_str(t).map_err(|e| anyhow::anyhow!("--settings is not JSON: {e}")))
        .transpose()
}

/// `telltale connections …`: one arm per subcommand, each a call and its printout (a
/// dispatch table, long because the subcommands are many).
async fn manage_connections(config: Config, action: ConnectionsCommand) -> anyhow::Result<()> {
    use crate::tokens::manage::{self, ConnectionChange, ConnectionSpec, view};
    let state = one_shot_state(config).await?;
    let at = crate::storage::now();
    let print = |c: &connections::Connection| {
        println!(
            "{}",
            serde_json::to_string_pretty(&view(c, at)).unwrap_or_default()
        );
    };
    let change = |id: i64, change: ConnectionChange| {
        let state = &state;
        async move { manage::update(&state.db, &state.crypto, id, change).await }
    };
    let result = match action {
        ConnectionsCommand::List => {
            let mut all = connections::list_connections(&state.db).await?;
            all.sort_by_key(|c| (c.expires_at.is_none(), c.expires_at.map(|t| t.0)));
            println!(
                "{:<6} {:<26} {:<24} {:<13} {:<27} TOKEN",
                "ID", "PROVIDER", "NAME", "STATUS", "EXPIRES AT"
            );
            for c in &all {
                println!(
                    "{:<6} {:<26} {:<24} {:<13} {:<27} {}",
                    c.id,
                    c.provider,
                    c.name,
                    crate::tokens::token_status(c, crate::tokens::lead_for(c), at),
                    c.expires_at.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
                    c.token_fingerprint.as_deref().unwrap_or("-")
                );
            }
            Ok(())
        }
        ConnectionsCommand::Show { id } => {
            let c = connections::get_connection(&state.db, id)
                .await
                .map_err(|_| anyhow::anyhow!("no connection with id {id}"))?;
            print(&c);
            Ok(())
        }
        ConnectionsCommand::Add {
            account,
            provider,
            name,
            base_url,
            settings,
            secrets,
            expires_at,
        } => {
            let secrets = read_secrets(secrets.as_deref())?;
            let spec = ConnectionSpec {
                account,
                provider,
                name,
                base_url,
                settings: parse_settings(settings.as_deref())?,
                credentials: secrets.credentials,
                access_token: secrets.access_token,
                refresh_token: secrets.refresh_token,
                expires_at,
            };
            manage::create(&state.db, &state.crypto, spec)
                .await
                .map(|c| print(&c))
        }
        ConnectionsCommand::Update {
            id,
            base_url,
            settings,
            secrets,
            expires_at,
        } => {
            let secrets = read_secrets(secrets.as_deref())?;
            let update = ConnectionChange {
                base_url,
                settings: parse_settings(settings.as_deref())?,
                credentials: secrets.credentials,
                access_token: secrets.access_token,
                refresh_token: secrets.refresh_token,
                expires_at,
                disabled: None,
            };
            change(id, update).await.map(|c| print(&c))
        }
        ConnectionsCommand::Disable { id } | ConnectionsCommand::Enable { id } => {
            let disabled = matches!(action, ConnectionsCommand::Disable { .. });
            let update = ConnectionChange {
                disabled: Some(disabled),
                ..Default::default()
            };
            change(id, update).await.map(|c| print(&c))
        }
        ConnectionsCommand::Delete { id } => manage::delete(&state.db, id)
            .await
            .map(|()| println!("deleted connection {id}")),
        ConnectionsCommand::ClearToken { id } => manage::clear_token(&state.db, id, "cli").await.map(|c| {
            println!(
                "connection {id} ({}): tokens {}",
                c.name,
                manage::cleared_meaning(&c)
            )
        }),
    };
    state.db.close();
    Ok(result?)
}

async fn poll(
    config: Config,
    dry_run: bool,
    platform: Option<String>,
    connection: Option<i64>,
) -> anyhow::Result<()> {
    let state = one_shot_state(config).await?;
    let request = crate::polling::PollRequest {
        trigger: crate::storage::PollTrigger::Cli,
        dry_run,
        platform,
        connection_id: connection,
    };
    let report = state.poll_engine.sweep(&request, crate::storage::now()).await?;
    println!(
        "{:<6} {:<12} {:<18} {:<24} {:<11} {:>6} {:>5} {:<7} DETAIL",
        "ID", "PLATFORM", "ENDPOINT", "CONNECTION", "OUTCOME", "ITEMS", "PAGES", "STORED"
    );
    for r in &report.results {
        println!(
            "{:<6} {:<12} {:<18} {:<24} {:<11} {:>6} {:>5} {:<7} {}",
            r.connection_id,
            r.platform,
            r.endpoint,
            r.connection,
            r.outcome,
            r.items,
            r.pages,
            if r.stored { "new" } else { "-" },
            r.detail.as_deref().unwrap_or("")
        );
    }
    println!(
        "{} poll(s) for {} connection(s) of {} user(s): {} ok, {} failed, {} skipped{}",
        report.polls,
        report.connections,
        report.users,
        report.succeeded,
        report.failed,
        report.skipped,
        if dry_run { " (dry run: nothing polled)" } else { "" }
    );
    state.db.close();
    if report.failed > 0 {
        anyhow::bail!("{} poll(s) failed", report.failed);
    }
    Ok(())
}

/// The password from standard input: typed at a prompt or piped, never an argument.
fn read_password() -> anyhow::Result<String> {
    use std::io::{BufRead, IsTerminal, Write};
    if std::io::stdin().is_terminal() {
        eprint!("password: ");
        std::io::stderr().flush()?;
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

async fn manage_users(config: Config, action: UserCommand) -> anyhow::Result<()> {
    match action {
        UserCommand::Add { admin, email } => {
            crate::auth::check_email(&email).map_err(anyhow::Error::msg)?;
            let password = read_password()?;
            let state = one_shot_state(config).await?;
            let role = if admin { Role::Admin } else { Role::Viewer };
            let user = crate::auth::add_user(&state.db, &email, &password, role.as_str()).await?;
            state.db.close();
            println!("added {} ({})", user.email, user.role);
        }
        UserCommand::List => {
            let state = one_shot_state(config).await?;
            let users = crate::storage::staff::list_users(&state.db).await?;
            state.db.close();
            println!(
                "{:<6} {:<40} {:<7} {:<9} LAST SIGN-IN",
                "ID", "EMAIL", "ROLE", "DISABLED"
            );
            for u in users {
                println!(
                    "{:<6} {:<40} {:<7} {:<9} {}",
                    u.id,
                    u.email,
                    u.role,
                    u.disabled,
                    u.last_login_at.map_or_else(|| "never".into(), |t| t.to_string())
                );
            }
        }
    }
    Ok(())
}

async fn create_api_token(config: Config, email: &str, name: &str) -> anyhow::Result<()> {
    let state = one_shot_state(config).await?;
    let user = crate::storage::staff::user_by_email(&state.db, &email.trim().to_ascii_lowercase())
        .await
        .map_err(|_| anyhow::anyhow!("no user {email}"))?;
    let (token, row) = crate::auth::add_api_token(&state.db, user.id, name).await?;
    state.db.close();
    eprintln!(
        "API token {} ({name}) for {}; it is shown only now:",
        row.id, user.email
    );
    println!("{token}");
    Ok(())
}

async fn send_test_notification(config: Config, endpoint: Option<String>) -> anyhow::Result<()> {
    let state = one_shot_state(config).await?;
    if let Some(refused) = state.mailer.refuse_test_notification(endpoint.as_deref()).await {
        state.db.close();
        anyhow::bail!(refused);
    }
    let results = state.mailer.send_test_notification(endpoint.as_deref()).await?;
    state.db.close();
    let mut failed = Vec::new();
    for (row, result) in &results {
        match result {
            Ok(()) => println!("sent test notification {} to endpoint {}", row.id, row.recipients),
            Err(error) => {
                eprintln!(
                    "test notification {} to endpoint {} not delivered: {error}",
                    row.id, row.recipients
                );
                failed.push(row.recipients.clone());
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("not delivered to {}", failed.join(", "))
    }
}

async fn send_test_email(config: Config, to: Vec<String>) -> anyhow::Result<()> {
    let state = one_shot_state(config).await?;
    if let Some((_, refused)) = state.mailer.refuse_test_email(&to).await {
        state.db.close();
        anyhow::bail!(refused);
    }
    let (email, result) = state.mailer.send_test(&to).await?;
    state.db.close();
    match result {
        Ok(()) => {
            println!("sent test email {} to {}", email.id, email.recipients);
            Ok(())
        }
        Err(error) => anyhow::bail!(
            "test email {} to {} not sent: {error}",
            email.id,
            email.recipients
        ),
    }
}
