//! The audit trail: every change a person or an API token makes, recorded with who, what,
//! to what, when and from which address, and for settings what changed (never a secret).
//!
//! The guard (`web::guard`) records every state-changing request of a signed-in caller, so a
//! new route is covered without its handler doing anything; `action` names each route in
//! words (a unit test holds every route to that). A handler may add the target of what it
//! created, or a note, as an `AuditNote` in its response's extensions. Sign-in and the
//! first-run setup, which have no caller yet, are recorded by their handlers.

use serde::Serialize;
use serde_json::Value;

use crate::app::AppState;
use crate::present;
use crate::storage::audit::{self, NewAuditEntry};
use crate::storage::{UtcTime, alerts, connections, now, polling, staff};

/// What a handler adds to its response for the audit log.
#[derive(Debug, Clone, Default)]
pub struct AuditNote {
    /// What the request made or touched, as people name it, when its path does not say.
    pub target: Option<String>,
    pub note: Option<String>,
}

impl AuditNote {
    pub fn target(target: impl Into<String>) -> AuditNote {
        AuditNote {
            target: Some(target.into()),
            note: None,
        }
    }

    pub fn note(note: impl Into<String>) -> AuditNote {
        AuditNote {
            target: None,
            note: Some(note.into()),
        }
    }
}

/// A state-changing route in words; `None` for routes that are not audited here (webhooks,
/// cron and the benchmark have their own trail; sign-in and setup record themselves).
pub fn action(method: &str, pattern: &str) -> Option<&'static str> {
    let method = method.to_ascii_uppercase();
    Some(match (method.as_str(), pattern) {
        ("POST", "/logout") => "Signed out",
        ("POST", "/api/users") => "Added a staff user",
        ("PATCH", "/api/users/{id}") => "Changed a staff user",
        ("DELETE", "/api/users/{id}") => "Removed a staff user",
        ("POST", "/api/users/{id}/reset-link") => "Made a password reset link",
        ("POST", "/api/me/password") => "Changed their own password",
        ("POST", "/api/api-tokens") => "Created an API token",
        ("DELETE", "/api/api-tokens/{id}") => "Revoked an API token",
        ("POST", "/api/milesight/token/refresh") => "Refreshed the Milesight token now",
        ("PUT", "/api/milesight/settings") => "Changed the Milesight application",
        ("DELETE", "/api/milesight/settings") => "Removed the Milesight application",
        ("POST", "/api/milesight/settings/test") => "Tested the Milesight application",
        ("PUT", "/api/milesight/webhooks") => "Set a Milesight webhook secret",
        ("DELETE", "/api/milesight/webhooks/{source}") => "Removed a Milesight webhook secret",
        ("PUT", "/api/notifications/smtp") => "Changed the SMTP server",
        ("DELETE", "/api/notifications/smtp") => "Removed the SMTP server",
        ("PUT", "/api/notifications/recipients") => "Changed who gets notifications",
        ("PUT", "/api/notifications/webhooks") => "Set an alert webhook",
        ("DELETE", "/api/notifications/webhooks/{name}") => "Removed an alert webhook",
        ("POST", "/api/connections") => "Added a connection",
        ("PATCH", "/api/connections/{id}") => "Changed a connection",
        ("DELETE", "/api/connections/{id}") => "Removed a connection",
        ("DELETE", "/api/connections/{id}/token") => "Cleared a connection's token",
        ("POST", "/api/connections/{id}/authorize") => "Started Connect",
        ("POST", "/api/tokens/{id}/refresh") => "Refresh now",
        ("POST", "/api/scheduler") => "Changed the scheduler",
        ("POST", "/api/alerts/test-email") => "Sent a test email",
        ("POST", "/api/alerts/test-notification") => "Sent a test notification",
        ("POST", "/api/alerts/{id}/ack") => "Acknowledged an alert",
        ("POST", "/api/silences") => "Silenced alerts",
        ("DELETE", "/api/silences/{id}") => "Ended a silence",
        ("PATCH", "/api/polling/{connection}/{endpoint}") => "Changed a poll",
        ("POST", "/api/polling/{connection}/{endpoint}/run") => "Ran a poll now",
        _ => return None,
    })
}

/// The `{name}` segments of `path` under `pattern`.
pub fn params<'a>(pattern: &'a str, path: &'a str) -> Vec<(&'a str, &'a str)> {
    pattern
        .split('/')
        .zip(path.split('/'))
        .filter_map(|(p, given)| {
            let name = p.strip_prefix('{')?.strip_suffix('}')?;
            Some((name.split(':').next().unwrap_or(name), given))
        })
        .collect()
}

fn param<'a>(params: &[(&str, &'a str)], name: &str) -> Option<&'a str> {
    params.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

/// What a request acts on, as people name it, read before the handler runs (a removal's
/// target is gone after it).
pub async fn target(state: &AppState, pattern: &str, path: &str) -> Option<String> {
    let params = params(pattern, path);
    let id = || param(&params, "id").and_then(|v| v.parse::<i64>().ok());
    let db = &state.db;
    if pattern.starts_with("/api/users/{id}") {
        return Some(match staff::user(db, id()?).await {
            Ok(user) => format!("staff user {}", user.email),
            Err(_) => format!("staff user #{}", id()?),
        });
    }
    if pattern == "/api/api-tokens/{id}" {
        let tokens = staff::list_api_tokens(db).await.ok()?;
        let token = tokens.iter().find(|t| Some(t.id) == id())?;
        let owner = staff::user(db, token.user_id)
            .await
            .map(|u| u.email)
            .unwrap_or_default();
        return Some(format!("API token '{}' of {owner}", token.name));
    }
    if pattern.starts_with("/api/connections/{id}") || pattern == "/api/tokens/{id}/refresh" {
        return Some(match connections::get_connection(db, id()?).await {
            Ok(c) => present::connection_name(&c),
            Err(_) => format!("connection #{}", id()?),
        });
    }
    if pattern == "/api/alerts/{id}/ack" {
        return Some(match alerts::get(db, id()?).await {
            Ok((alert, _)) => format!("alert: {}", alert.summary),
            Err(_) => format!("alert #{}", id()?),
        });
    }
    if pattern == "/api/silences/{id}" {
        let silences = alerts::silences(db, now()).await.ok()?;
        let silence = silences.iter().find(|s| Some(s.id) == id())?;
        return Some(format!("silence of {} ({})", silence.matcher, silence.reason));
    }
    if pattern.starts_with("/api/polling/{connection}/{endpoint}") {
        let connection = param(&params, "connection")?.parse::<i64>().ok()?;
        let endpoint = param(&params, "endpoint")?;
        let name = match connections::get_connection(db, connection).await {
            Ok(c) => present::connection_name(&c),
            Err(_) => format!("connection #{connection}"),
        };
        return Some(format!("{endpoint} poll of {name}"));
    }
    if let Some(source) = param(&params, "source") {
        return Some(format!("webhook source '{source}'"));
    }
    if let Some(name) = param(&params, "name") {
        return Some(format!("alert webhook '{name}'"));
    }
    None
}

/// Settings as they stand, for routes whose before/after is recorded: the same views the
/// pages and the API show, which never hold a secret.
pub async fn snapshot(state: &AppState, pattern: &str, path: &str) -> Option<Value> {
    let params = params(pattern, path);
    let id = || param(&params, "id").and_then(|v| v.parse::<i64>().ok());
    if pattern.starts_with("/api/notifications") {
        return serde_json::to_value(state.channels.view().await.ok()?).ok();
    }
    if pattern.starts_with("/api/milesight/settings") && !pattern.ends_with("/test")
        || pattern.starts_with("/api/milesight/webhooks")
    {
        let settings = crate::web::api::milesight::settings_data(state).await.ok()?;
        return serde_json::to_value(settings).ok();
    }
    if pattern == "/api/users/{id}" {
        let user = staff::user(&state.db, id()?).await.ok()?;
        return Some(serde_json::json!({ "role": user.role, "disabled": user.disabled }));
    }
    if pattern == "/api/connections/{id}" {
        return serde_json::to_value(connections::get_connection(&state.db, id()?).await.ok()?).ok();
    }
    if pattern == "/api/polling/{connection}/{endpoint}" {
        let connection = param(&params, "connection")?.parse::<i64>().ok()?;
        let endpoint = param(&params, "endpoint")?;
        let state = polling::get_state(&state.db, connection, endpoint).await.ok()?;
        return serde_json::to_value(state).ok();
    }
    None
}

/// One setting that a change altered.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Change {
    pub field: String,
    pub before: String,
    pub after: String,
}

/// Fields that change on their own (bookkeeping, not what a person changed).
fn bookkeeping(field: &str) -> bool {
    let last = field.rsplit('.').next().unwrap_or(field);
    matches!(
        last,
        "updated_at" | "lease_owner" | "lease_expires_at" | "generated_at" | "last_used_at"
            // Where a value comes from (the config, this page): it follows the value itself.
            | "origin" | "env"
    )
}

/// A name that may hold a secret: its value is never written, only that it changed.
fn secret_named(field: &str) -> bool {
    let last = field.rsplit('.').next().unwrap_or(field).to_ascii_lowercase();
    ["secret", "password", "token", "url"]
        .iter()
        .any(|word| last.contains(word))
        && !last.ends_with("_set")
        && !last.starts_with("base_url")
}

/// Flattens JSON to `path = text` (arrays of plain values joined with commas).
fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
    let key = |k: &str| {
        if prefix.is_empty() {
            k.to_owned()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                flatten(&key(k), v, out);
            }
        }
        Value::Array(items) if items.iter().all(|v| !v.is_object() && !v.is_array()) => {
            let joined: Vec<String> = items.iter().map(text).collect();
            let joined = if joined.is_empty() {
                "(empty)".to_owned()
            } else {
                joined.join(", ")
            };
            out.push((prefix.to_owned(), joined));
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                // Objects in a list are keyed by their name where they have one.
                let name = ["name", "source", "rule"]
                    .iter()
                    .find_map(|k| v.get(*k).and_then(Value::as_str).map(str::to_owned))
                    .unwrap_or_else(|| i.to_string());
                flatten(&key(&name), v, out);
            }
        }
        other => out.push((prefix.to_owned(), text(other))),
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "(none)".into(),
        Value::String(s) if s.is_empty() => "(empty)".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// What differs between two snapshots, field by field; secrets as "(changed)".
pub fn changes(before: &Value, after: &Value) -> Vec<Change> {
    let (mut old, mut new) = (Vec::new(), Vec::new());
    flatten("", before, &mut old);
    flatten("", after, &mut new);
    let mut fields: Vec<&String> = old.iter().chain(new.iter()).map(|(k, _)| k).collect();
    fields.sort();
    fields.dedup();
    let find = |list: &[(String, String)], field: &str| {
        list.iter()
            .find(|(k, _)| k == field)
            .map_or_else(|| "(none)".to_owned(), |(_, v)| v.clone())
    };
    fields
        .into_iter()
        .filter(|f| !bookkeeping(f))
        .filter_map(|field| {
            let (b, a) = (find(&old, field), find(&new, field));
            if b == a {
                return None;
            }
            let (before, after) = if secret_named(field) {
                ("(hidden)".to_owned(), "(changed)".to_owned())
            } else {
                (b, a)
            };
            Some(Change {
                field: field.clone(),
                before,
                after,
            })
        })
        .collect()
}

/// Writes one entry; a failure is logged, never the caller's (the change itself is done).
pub async fn record(state: &AppState, entry: NewAuditEntry) {
    let days = i64::from(state.config.auth.audit_retention_days);
    let older_than = UtcTime::new(now().0 - chrono::Duration::days(days));
    if let Err(e) = audit::record(&state.db, &entry, older_than).await {
        tracing::warn!(error = %e, action = %entry.action, actor = %entry.actor, "cannot write the audit log");
    }
}

/// The `details` column: the changes and the handler's note, when there are any.
pub fn details(changes: &[Change], note: Option<&str>) -> Option<String> {
    if changes.is_empty() && note.is_none() {
        return None;
    }
    Some(serde_json::json!({ "changes": changes, "note": note }).to_string())
}

/// A stored `details` column read back for the Audit page.
pub fn read_details(details: Option<&str>) -> (Vec<Change>, Option<String>) {
    let Some(value) = details.and_then(|d| serde_json::from_str::<Value>(d).ok()) else {
        return (Vec::new(), None);
    };
    let changes = value
        .get("changes")
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default();
    let note = value.get("note").and_then(Value::as_str).map(str::to_owned);
    (changes, note)
}

/// An entry written by a handler itself: a sign-in, the first-run setup and a reset link
/// (no caller yet), or a consent's result (a GET, which the guard does not audit).
pub async fn record_unguarded(state: &AppState, actor: &str, client: &str, action: &str, route: &str) {
    record_event(state, actor, client, action, route, None, None).await;
}

/// `record_unguarded` with what it acted on and a note.
pub async fn record_event(
    state: &AppState,
    actor: &str,
    client: &str,
    action: &str,
    route: &str,
    target: Option<String>,
    note: Option<&str>,
) {
    record(
        state,
        NewAuditEntry {
            at: now(),
            actor: actor.to_owned(),
            client: (!client.is_empty()).then(|| client.to_owned()),
            action: action.to_owned(),
            target,
            route: route.to_owned(),
            status: 200,
            details: details(&[], note),
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_state_changing_route_of_staff_is_named_in_words() {
        let unnamed: Vec<String> = crate::web::all_routes()
            .into_iter()
            .filter(|(method, _)| !matches!(*method, "get" | "head"))
            .filter(|(_, pattern)| {
                !pattern.starts_with("/webhooks/")
                    && !pattern.starts_with("/api/cron/")
                    && !matches!(
                        *pattern,
                        "/login" | "/setup" | "/bench/discard" | "/reset-password"
                    )
            })
            .filter(|(method, pattern)| action(method, pattern).is_none())
            .map(|(method, pattern)| format!("{method} {pattern}"))
            .collect();
        assert!(
            unnamed.is_empty(),
            "routes the audit log cannot name: {unnamed:?}"
        );
    }

    #[test]
    fn params_are_read_from_the_pattern() {
        assert_eq!(
            params(
                "/api/polling/{connection}/{endpoint}/run",
                "/api/polling/7/repos/run"
            ),
            vec![("connection", "7"), ("endpoint", "repos")]
        );
    }

    #[test]
    fn changes_name_each_field_and_hide_secrets() {
        let before = json!({"on_call": {"value": ["a@x"]}, "smtp": {"host": "old", "password_set": false},
            "webhooks": [{"name": "ops", "url": "https://a"}], "updated_at": "1"});
        let after = json!({"on_call": {"value": ["a@x", "b@x"]}, "smtp": {"host": "new", "password_set": true},
            "webhooks": [{"name": "ops", "url": "https://b"}], "updated_at": "2"});
        let changes = changes(&before, &after);
        let fields: Vec<&str> = changes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "on_call.value",
                "smtp.host",
                "smtp.password_set",
                "webhooks.ops.url"
            ]
        );
        assert_eq!(changes[0].after, "a@x, b@x");
        assert_eq!(changes[3].before, "(hidden)");
        assert!(!format!("{changes:?}").contains("https://b"));
    }
}
