//! The Milesight Development Platform OpenAPI over HTTP (apis.md §1): the device search. (The
//! token comes from the refresh engine's `oauth2_client_credentials` provider.) Base URL from config, so tests aim it at a fake on 127.0.0.1.

use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::providers::Answer;
use crate::redact::redact;

/// How an MDP call failed, in the terms a caller acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MdpError {
    /// The client id/secret were refused (`authentication_failed`): retrying cannot help.
    InvalidCredentials(String),
    /// Worth retrying later: timeouts, connection failures, 5xx, 429, unreadable responses.
    Transient {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Any other refusal (4xx): retrying the same request cannot help.
    Permanent(String),
}

impl MdpError {
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            MdpError::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            MdpError::InvalidCredentials(m)
            | MdpError::Permanent(m)
            | MdpError::Transient { message: m, .. } => m,
        }
    }
}

impl std::fmt::Display for MdpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MdpError::InvalidCredentials(m) => write!(f, "credentials refused: {m}"),
            MdpError::Transient { message, .. } => write!(f, "temporary failure: {message}"),
            MdpError::Permanent(m) => write!(f, "request refused: {m}"),
        }
    }
}

/// MDP wraps every response: `{data, status: "Success", requestId}` or
/// `{status: "Failed", errCode, errMsg, requestId}`.
#[derive(Debug, Deserialize)]
struct Envelope<T> {
    data: Option<T>,
    status: Option<String>,
    #[serde(rename = "errCode")]
    err_code: Option<String>,
    #[serde(rename = "errMsg")]
    err_msg: Option<String>,
}

/// Turns an MDP response into its `data`, or a classified error whose text never contains
/// any of `secrets`.
async fn read_wrapped<T: DeserializeOwned>(
    response: Result<reqwest::Response, reqwest::Error>,
    secrets: &[&str],
) -> Result<T, MdpError> {
    let response = match response {
        Ok(r) => r,
        Err(e) => {
            let kind = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "could not connect"
            } else {
                "request failed"
            };
            // reqwest's own message names the URL, which holds no secret (credentials travel in the body).
            return Err(MdpError::Transient {
                message: redact(&format!("{kind}: {e}"), secrets),
                retry_after: None,
            });
        }
    };
    let status = response.status();
    let answer = Answer::of(&response);
    let body = response.bytes().await.map_err(|e| MdpError::Transient {
        message: redact(&format!("reading the response failed: {e}"), secrets),
        retry_after: None,
    })?;
    let envelope: Option<Envelope<T>> = serde_json::from_slice(&body).ok();
    let upstream = envelope
        .as_ref()
        .map(|e| {
            format!(
                "HTTP {} {}{}",
                status.as_u16(),
                e.err_code.as_deref().unwrap_or("(no errCode)"),
                e.err_msg.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
            )
        })
        .unwrap_or_else(|| format!("HTTP {} with an unreadable body", status.as_u16()));
    let upstream = redact(&upstream, secrets);
    let auth_failed = envelope.as_ref().and_then(|e| e.err_code.as_deref()) == Some("authentication_failed");

    match answer {
        Answer::RateLimited { retry_after } | Answer::Unavailable { retry_after } => {
            return Err(MdpError::Transient {
                message: upstream,
                retry_after,
            });
        }
        _ if auth_failed || status == StatusCode::UNAUTHORIZED => {
            return Err(MdpError::InvalidCredentials(upstream));
        }
        Answer::Refused => return Err(MdpError::Permanent(upstream)),
        Answer::Ok => {}
    }
    match envelope {
        Some(Envelope {
            data: Some(data),
            status: Some(s),
            ..
        }) if s == "Success" => Ok(data),
        Some(_) => Err(MdpError::Permanent(upstream)),
        None => Err(MdpError::Transient {
            message: upstream,
            retry_after: None,
        }),
    }
}

/// A device as `/device/openapi/v1/devices/search` lists it (fields we use).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MdpDevice {
    #[serde(default, deserialize_with = "id_text")]
    pub device_id: Option<String>,
    pub sn: Option<String>,
    #[serde(rename = "devEUI")]
    pub dev_eui: Option<String>,
    pub name: Option<String>,
    pub model: Option<String>,
    pub connect_status: Option<String>,
    pub electricity: Option<f64>,
    /// Milliseconds since the epoch of the device's last report.
    pub last_update_time: Option<i64>,
}

/// 64-bit ids arrive as numbers or strings; keep them as exact text.
fn id_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let value = Option::<serde_json::Value>::deserialize(d)?;
    Ok(match value {
        Some(serde_json::Value::String(s)) => Some(s),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DevicePage {
    pub total: Option<i64>,
    #[serde(default)]
    pub content: Vec<MdpDevice>,
}

/// One page of `POST {base}/device/openapi/v1/devices/search` (pages are numbered from 1).
pub async fn search_devices(
    http: &reqwest::Client,
    base_url: &str,
    access_token: &str,
    page_number: i64,
    page_size: i64,
) -> Result<DevicePage, MdpError> {
    let response = http
        .post(format!("{base_url}/device/openapi/v1/devices/search"))
        .bearer_auth(access_token)
        .json(&serde_json::json!({ "pageNumber": page_number, "pageSize": page_size }))
        .send()
        .await;
    read_wrapped(response, &[access_token]).await
}
