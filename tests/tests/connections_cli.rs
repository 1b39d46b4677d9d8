//! `telltale connections …`: the built binary adds, shows, lists, changes, disables, enables and
//! deletes connections; secrets come from a file or stdin and never appear in its output.

use serde_json::Value;
use telltale_e2e::{Backend, TEST_SECRET_KEY, TestDb, both_backends, run_cli, run_cli_with_stdin};

both_backends!(
    connections_are_managed_from_the_command_line,
    bad_input_is_refused_clearly,
);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs the CLI, asserts it succeeded, and returns stdout.
fn ok(args: &[&str], env: &[(&str, &str)], stdin: &str) -> String {
    let out = run_cli_with_stdin(args, env, stdin);
    assert!(
        out.status.success(),
        "{args:?} failed:\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let shown = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        !shown.contains("CANARY"),
        "a secret was printed by {args:?}:\n{shown}"
    );
    text(&out.stdout)
}

fn json(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

async fn connections_are_managed_from_the_command_line(backend: Backend) {
    let db = TestDb::new(backend).await;
    let env = [
        ("DATABASE_URL", db.url()),
        ("TELLTALE_SECRET_KEY", TEST_SECRET_KEY),
    ];
    let secrets = r#"{"credentials": {"client_id": "c1", "client_secret": "CANARY-secret"},
        "access_token": "CANARY-access-WXYZ", "refresh_token": "CANARY-refresh"}"#;
    let added = json(&ok(
        &[
            "connections",
            "add",
            "--account",
            "acme",
            "--provider",
            "oauth2_refresh",
            "--name",
            "spotify-main",
            "--settings",
            r#"{"preset": "spotify"}"#,
            "--secrets",
            "-",
            "--expires-at",
            "2099-01-01T00:00:00Z",
        ],
        &env,
        secrets,
    ));
    let id = added["id"].as_i64().unwrap();
    assert_eq!(added["token_fingerprint"], "…WXYZ");
    assert_eq!(added["status"], "active");
    assert_eq!(
        (
            added["has_credentials"].as_bool(),
            added["has_refresh_token"].as_bool()
        ),
        (Some(true), Some(true))
    );

    // The secrets were sealed with the configured key: the engine can read them back.
    let direct = db.open_migrated().await;
    let row = telltale::storage::connections::get_connection(&direct, id)
        .await
        .unwrap();
    // TEST_SECRET_KEY is 0x5e repeated.
    let crypto = telltale::crypto::Crypto::new(&[0x5e; 32], &[]);
    let opened = telltale::storage::connections::secrets(&crypto, &row).unwrap();
    assert_eq!(opened.refresh_token.as_deref(), Some("CANARY-refresh"));

    let listed = ok(&["connections", "list"], &env, "");
    let line = listed
        .lines()
        .find(|l| l.contains("spotify-main"))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(
        line.contains("oauth2_refresh") && line.contains("active") && line.contains("…WXYZ"),
        "{line}"
    );

    let id_text = id.to_string();
    let updated = json(&ok(
        &[
            "connections",
            "update",
            &id_text,
            "--settings",
            r#"{"preset": "spotify", "lead_secs": 60}"#,
        ],
        &env,
        "",
    ));
    assert_eq!(updated["settings"]["lead_secs"], 60);

    let disabled = json(&ok(&["connections", "disable", &id_text], &env, ""));
    assert_eq!(disabled["status"], "disabled");
    let sweep = ok(&["refresh-tokens", "--dry-run"], &env, "");
    assert!(
        sweep.contains("0 due"),
        "a disabled connection is not refreshed: {sweep}"
    );
    let enabled = json(&ok(&["connections", "enable", &id_text], &env, ""));
    assert_eq!(enabled["status"], "active");

    // New secrets from a file re-authorise; the file's contents are never echoed.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secrets.json");
    std::fs::write(&file, r#"{"access_token": "CANARY-new-token-QQ77"}"#).unwrap();
    let rotated = json(&ok(
        &[
            "connections",
            "update",
            &id_text,
            "--secrets",
            file.to_str().unwrap(),
        ],
        &env,
        "",
    ));
    assert_eq!(rotated["token_fingerprint"], "…QQ77");
    let shown = json(&ok(&["connections", "show", &id_text], &env, ""));
    assert_eq!(shown["token_fingerprint"], "…QQ77");

    assert!(ok(&["connections", "delete", &id_text], &env, "").contains(&format!("deleted connection {id}")));
    let gone = run_cli(&["connections", "show", &id_text], &env);
    assert!(!gone.status.success());
    assert!(
        text(&gone.stderr).contains(&format!("no connection with id {id}")),
        "{}",
        text(&gone.stderr)
    );
}

async fn bad_input_is_refused_clearly(backend: Backend) {
    let db = TestDb::new(backend).await;
    let env = [
        ("DATABASE_URL", db.url()),
        ("TELLTALE_SECRET_KEY", TEST_SECRET_KEY),
    ];
    let base = ["connections", "add", "--account", "acme", "--name", "x"];

    let unknown = run_cli(&[&base[..], &["--provider", "myspace"]].concat(), &env);
    assert_eq!(unknown.status.code(), Some(1));
    let stderr = text(&unknown.stderr);
    assert!(
        stderr.contains("unknown provider \"myspace\"") && stderr.contains("oauth2_client_credentials"),
        "names the known kinds: {stderr}"
    );

    let garbled = run_cli_with_stdin(
        &[&base[..], &["--provider", "thingsboard", "--secrets", "-"]].concat(),
        &env,
        r#"{"credentials": {"password": "CANARY-pw"}, "acess_token": "CANARY-typo"}"#,
    );
    assert_eq!(garbled.status.code(), Some(1));
    let stderr = text(&garbled.stderr);
    assert!(stderr.contains("unknown field `acess_token`"), "{stderr}");
    assert!(!stderr.contains("CANARY"), "{stderr}");

    let bad_url = run_cli(
        &[
            &base[..],
            &["--provider", "thingsboard", "--base-url", "ftp://tb.example"],
        ]
        .concat(),
        &env,
    );
    assert!(text(&bad_url.stderr).contains("base_url must be an http(s) URL"));

    let missing = run_cli(&["connections", "disable", "424242"], &env);
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stderr).contains("no connection with id 424242"));

    let list = run_cli(&["connections", "list"], &env);
    assert!(list.status.success());
    assert_eq!(
        text(&list.stdout).lines().count(),
        1,
        "nothing was created: {}",
        text(&list.stdout)
    );
}
