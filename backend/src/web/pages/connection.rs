//! `GET /connections/{id}`: facts, Connect / Reconnect, refresh, disable, delete, edit.

use actix_web::{HttpResponse, web};
use askama::Template;

use super::{Base, render};
use crate::app::AppState;
use crate::auth::Staff;
use crate::present::filters;
use crate::providers::Choice;
use crate::storage::connections::{self, Connection, ConnectionSecrets};
use crate::storage::refresh_log::{self, LogFilter, RefreshLogEntry};
use crate::storage::{StorageError, now};
use crate::tokens::manage::ConnectionView;
use crate::web::ApiError;

/// One input of a connection's edit form, with its current value (never a secret's).
struct EditField {
    key: &'static str,
    label: &'static str,
    input: &'static str,
    placeholder: &'static str,
    value: String,
    /// For a secret: whether one is stored.
    set: bool,
}

#[derive(Template)]
#[template(path = "connection.html")]
struct ConnectionPage {
    base: Base,
    c: ConnectionView,
    label: String,
    account: String,
    consent: bool,
    /// Whether cleared tokens come back by themselves (stored credentials log in anew).
    logs_in_anew: bool,
    redirect_uri: String,
    fields: Vec<EditField>,
    log: Vec<RefreshLogEntry>,
    /// Arrived from a consent screen whose code was just exchanged.
    just_connected: bool,
}

#[derive(serde::Deserialize)]
pub struct ConnectionQuery {
    connected: Option<u8>,
}

/// `GET /connections/{id}`
pub async fn connection(
    state: web::Data<AppState>,
    staff: web::ReqData<Staff>,
    id: web::Path<i64>,
    query: web::Query<ConnectionQuery>,
    req: actix_web::HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let c = connections::get_connection(&state.db, *id)
        .await
        .map_err(|e| match e {
            StorageError::NotFound => ApiError::not_found(format!("no connection with id {id}")),
            other => other.into(),
        })?;
    let secrets = connections::secrets(&state.crypto, &c)?;
    let choice = crate::providers::choice_of(&c);
    let filter = LogFilter {
        connection_id: Some(c.id),
        ..Default::default()
    };
    let view = crate::tokens::manage::view(&c, now());
    render(&ConnectionPage {
        base: Base::new(format!("Connection {}", view.name), "/tokens", &staff),
        label: choice
            .as_ref()
            .map_or_else(|| c.provider.clone(), |ch| ch.label.to_owned()),
        consent: choice.as_ref().is_some_and(|ch| ch.consent),
        logs_in_anew: crate::tokens::manage::logs_in_anew(&c),
        fields: choice
            .as_ref()
            .map(|ch| edit_fields(ch, &c, &secrets))
            .unwrap_or_default(),
        account: connections::account_name(&state.db, c.account_id).await?,
        redirect_uri: crate::web::connect::redirect_uri(&state, &req),
        log: refresh_log::query(&state.db, &filter, 20).await?,
        just_connected: query.connected == Some(1) && c.access_token.is_some(),
        c: view,
    })
}

/// The platform form's inputs, filled with what is stored (secrets only say whether one is).
fn edit_fields(choice: &Choice, c: &Connection, secrets: &ConnectionSecrets) -> Vec<EditField> {
    let credentials: serde_json::Value = secrets
        .credentials
        .as_deref()
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_default();
    let settings = c.settings.to_value();
    choice
        .fields
        .iter()
        .map(|f| {
            let (value, set) = match f.key.split_once('.') {
                _ if f.key == "base_url" => (c.base_url.clone().unwrap_or_default(), false),
                _ if f.key == "access_token" => (String::new(), secrets.access_token.is_some()),
                _ if f.key == "refresh_token" => (String::new(), secrets.refresh_token.is_some()),
                Some(("settings", key)) => (text_of(&settings, key), false),
                Some(("credentials", key)) if f.secret() => (String::new(), credentials.get(key).is_some()),
                Some(("credentials", key)) => (text_of(&credentials, key), false),
                _ => (String::new(), false),
            };
            EditField {
                key: f.key,
                label: f.label,
                input: f.input,
                placeholder: f.placeholder,
                value,
                set,
            }
        })
        .collect()
}

/// A JSON value's text form (strings without quotes), empty when absent.
fn text_of(object: &serde_json::Value, key: &str) -> String {
    match object.get(key) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}
