//! The command line as an operator meets it: bad configuration exits 2 naming the key,
//! `check-config` masks secrets, `gen-key` prints a usable key.

use std::process::{Command, Output};

fn telltale(args: &[&str], env: &[(&str, &str)], dir: &std::path::Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_telltale"));
    cmd.args(args)
        .env_clear()
        .current_dir(dir)
        .env("TELLTALE_DATA_DIR", dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap_or_else(|e| panic!("run telltale: {e}"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn invalid_values_exit_2_and_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &str)] = &[
        ("TELLTALE_LISTEN", "not-an-address", "listen (TELLTALE_LISTEN)"),
        (
            "DATABASE_URL",
            "mysql://root:hunter2@localhost/db",
            "database_url (DATABASE_URL)",
        ),
        (
            "TELLTALE_SECRET_KEY",
            "too-short",
            "secret_key (TELLTALE_SECRET_KEY)",
        ),
        ("LOG_FORMAT", "xml", "log_format (LOG_FORMAT)"),
        (
            "TELLTALE_DB_MAX_CONNECTIONS",
            "lots",
            "database.max_connections (TELLTALE_DB_MAX_CONNECTIONS)",
        ),
        (
            "SMTP_URL",
            "imap://ops:hunter2@mail.example.com",
            "email.smtp_url (SMTP_URL)",
        ),
        (
            "TELLTALE_ONCALL_EMAILS",
            "ops@example.com, not-an-address",
            "email.on_call (TELLTALE_ONCALL_EMAILS)",
        ),
    ];
    for (var, value, key) in cases {
        for command in ["serve", "check-config"] {
            let out = telltale(&[command], &[(var, value)], dir.path());
            assert_eq!(
                out.status.code(),
                Some(2),
                "{command} with {var}={value}: {}",
                stderr(&out)
            );
            let err = stderr(&out);
            assert!(err.contains(key), "{var}: message should name {key}: {err}");
            assert!(
                !err.contains("hunter2"),
                "the error must not echo a password: {err}"
            );
        }
    }
}

#[test]
fn config_file_problems_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = telltale(&["--config", "nope.toml", "check-config"], &[], dir.path());
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("nope.toml"), "{}", stderr(&missing));

    std::fs::write(
        dir.path().join("bad.toml"),
        "listen = \"127.0.0.1:1\"\nlisten_port = 9\n",
    )
    .unwrap();
    let unknown = telltale(&["check-config"], &[("TELLTALE_CONFIG", "bad.toml")], dir.path());
    assert_eq!(unknown.status.code(), Some(2));
    assert!(stderr(&unknown).contains("listen_port"), "{}", stderr(&unknown));

    std::fs::write(
        dir.path().join("typed.toml"),
        "[database]\nmax_connections = \"many\"\n",
    )
    .unwrap();
    let typed = telltale(&["--config", "typed.toml", "check-config"], &[], dir.path());
    assert_eq!(typed.status.code(), Some(2));
    assert!(stderr(&typed).contains("invalid type"), "{}", stderr(&typed));
}

#[test]
fn check_config_shows_effective_values_with_secrets_masked() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("telltale.toml"),
        "listen = \"127.0.0.1:9100\"\n[database]\nmax_connections = 3\n",
    )
    .unwrap();
    let key = "c0ffee".repeat(10) + "c0ff";
    let out = telltale(
        &["--config", "telltale.toml", "check-config"],
        &[
            (
                "DATABASE_URL",
                "postgres://app:CANARY-pw@db.internal:5432/telltale",
            ),
            ("TELLTALE_SECRET_KEY", &key),
            ("TELLTALE_LISTEN", "0.0.0.0:9200"),
            ("SMTP_URL", "smtps://alerts:CANARY-smtp@mail.example.com:465"),
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("listen = \"0.0.0.0:9200\""),
        "environment wins over the file: {shown}"
    );
    assert!(shown.contains("max_connections = 3"), "file value kept: {shown}");
    assert!(
        shown.contains("postgres://app:****@db.internal:5432/telltale"),
        "{shown}"
    );
    assert!(
        !shown.contains("CANARY") && !shown.contains(&key),
        "secrets must be masked: {shown}"
    );
}

#[test]
fn gen_key_prints_a_key_the_service_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let out = telltale(&["gen-key"], &[], dir.path());
    assert!(out.status.success());
    let key = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(key.len(), 64);
    assert!(key.chars().all(|c| c.is_ascii_hexdigit()));
    let check = telltale(&["check-config"], &[("TELLTALE_SECRET_KEY", &key)], dir.path());
    assert!(check.status.success(), "{}", stderr(&check));
}

/// Operators configure Telltale from the README's table, generated from the settings tables:
/// a key added, renamed or re-defaulted without regenerating it fails here. Regenerate with
/// `TELLTALE_UPDATE_README=1 cargo test -p telltale --test cli`.
#[test]
fn the_readme_configuration_table_is_generated_from_the_settings() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    let readme = std::fs::read_to_string(path).unwrap();
    let (start, end) = (
        "<!-- configuration table: generated -->\n",
        "<!-- end of configuration table -->",
    );
    let from = readme
        .find(start)
        .expect("README lacks the configuration table's start marker")
        + start.len();
    let to = readme[from..]
        .find(end)
        .expect("README lacks the table's end marker")
        + from;
    let generated = telltale::config::Config::documentation_table();
    if readme[from..to] != generated && std::env::var_os("TELLTALE_UPDATE_README").is_some() {
        std::fs::write(path, format!("{}{generated}{}", &readme[..from], &readme[to..])).unwrap();
        return;
    }
    assert!(
        readme[from..to] == generated,
        "README's configuration table is stale; regenerate it with \
         TELLTALE_UPDATE_README=1 cargo test -p telltale --test cli"
    );
}

#[test]
fn check_config_shows_schedules_as_they_run_with_their_next_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = telltale(
        &["check-config"],
        &[
            // The original Milesight job's schedule, in standard crontab syntax.
            ("TELLTALE_TOKEN_SWEEP_SCHEDULE", "*/30 * * * *"),
            ("TELLTALE_SCHEDULER_TIMEZONE", "Europe/Berlin"),
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("sweep_schedule = \"0 */30 * * * *\""), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("# tokens.sweep_schedule = \"0 */30 * * * *\": "))
        .unwrap_or_else(|| panic!("no schedule line: {text}"));
    let runs: Vec<&str> = line.split(": ").nth(1).unwrap_or_default().split(", ").collect();
    assert_eq!(runs.len(), 3, "{line}");
    for run in runs {
        assert!(run.ends_with(":00:00") || run.ends_with(":30:00"), "{line}");
    }
    assert!(text.contains("next three runs in Europe/Berlin"), "{text}");
}

/// Every command the deployment units and the deployment guide run exists: a renamed
/// subcommand would otherwise fail only on a production host.
#[test]
fn the_deployment_units_run_real_commands() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(repo.join("deployment")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("service") {
            continue;
        }
        let unit = std::fs::read_to_string(&path).unwrap();
        let exec = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap_or_else(|| panic!("{} has no ExecStart", path.display()));
        let words: Vec<&str> = exec.split_whitespace().collect();
        assert_eq!(words.first(), Some(&"/usr/local/bin/telltale"), "{exec}");
        let config_at = words
            .iter()
            .position(|w| *w == "--config")
            .unwrap_or_else(|| panic!("{exec}"));
        let subcommand: Vec<&str> = words[config_at + 2..].to_vec();
        let mut args = subcommand.clone();
        args.push("--help");
        let out = telltale(&args, &[], dir.path());
        assert!(
            out.status.success(),
            "{}: `telltale {}` is not a command: {}",
            path.display(),
            subcommand.join(" "),
            stderr(&out)
        );
        checked += 1;
    }
    assert!(checked >= 3, "the service, refresh and poll units");
    let guide = std::fs::read_to_string(repo.join("deployment/README.md")).unwrap();
    for command in ["refresh-tokens", "poll", "check-config", "migrate", "gen-key"] {
        assert!(
            guide.contains(&format!("telltale {command}"))
                || guide.contains(&format!("telltale.toml {command}")),
            "{command}"
        );
        let out = telltale(&[command, "--help"], &[], dir.path());
        assert!(out.status.success(), "`telltale {command}`: {}", stderr(&out));
    }
}

#[test]
fn alert_webhook_endpoints_are_checked_and_masked() {
    let dir = tempfile::tempdir().unwrap();
    let check = |toml: &str, env: &[(&str, &str)]| {
        std::fs::write(dir.path().join("hooks.toml"), toml).unwrap();
        telltale(&["--config", "hooks.toml", "check-config"], env, dir.path())
    };
    let hook = "[[alerts.webhooks]]\nname = \"ops\"\nurl = \"https://hooks.example.com/T0/hunter2-path\"\n";
    let cases: &[(String, &str)] = &[
        (
            format!("{hook}secret = \"hunter2\"\n"),
            "entry 1: secret: expected whsec_",
        ),
        (
            format!("{hook}secret = \"whsec_c2hvcnQ=\"\n"),
            "entry 1: secret: the key is 5 bytes",
        ),
        (
            format!("{hook}rules = [\"nope\"]\n"),
            "entry 1: unknown rule \"nope\"",
        ),
        (format!("{hook}{hook}"), "entry 2: name \"ops\" is listed twice"),
        (hook.replace("\"ops\"", "\"default\""), "not \"default\""),
        (
            hook.replace("https://hooks", "ftp://hooks"),
            "entry 1: url is not an http(s) URL",
        ),
    ];
    for (toml, expected) in cases {
        let out = check(toml, &[]);
        assert_eq!(out.status.code(), Some(2), "{toml}");
        let err = stderr(&out);
        assert!(
            err.contains("alerts.webhooks") && err.contains(expected),
            "{toml}: {err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
    }
    let lone_secret = check(
        "",
        &[(
            "TELLTALE_ALERT_WEBHOOK_SECRET",
            "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ=",
        )],
    );
    assert_eq!(lone_secret.status.code(), Some(2));
    assert!(stderr(&lone_secret).contains("set only together with alerts.webhook_url"));

    let out = check(
        &format!("{hook}secret = \"whsec_aHVudGVyMi1odW50ZXIyLWh1bnRlcjI=\"\nrules = [\"device_offline\"]\n"),
        &[(
            "TELLTALE_ALERT_WEBHOOK_URL",
            "https://hooks.slack.com/services/hunter2",
        )],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains(r#"webhooks = [{ name = "ops", url = "********", secret = "********", rules = ["device_offline"] }]"#),
        "{shown}"
    );
    assert!(shown.contains("webhook_url = \"********\""), "{shown}");
    assert!(
        !shown.contains("hunter2") && !shown.contains("aHVudGVy"),
        "{shown}"
    );
}

/// On a fresh machine a one-shot command may come before the service ever ran: the default
/// SQLite database's directory is created, not reported as "unable to open database file".
#[test]
fn one_shot_commands_create_the_default_database_directory() {
    let dir = tempfile::tempdir().unwrap();
    let out = telltale(&["migrate"], &[], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dir.path().join("data/telltale.db").exists());
}
