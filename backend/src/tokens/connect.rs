//! Connecting a platform through its consent screen: OAuth 2.0 authorization code with PKCE
//! (S256), apis.md §6. The `state` parameter carries the flow itself, sealed with the service's
//! key: which connection, the session that started it (so a link opened in another browser or
//! by someone else is refused), the PKCE verifier, the redirect URI and when it started (valid
//! `STATE_LIFETIME_SECS`). Sealed, it needs no table and works on every replica; nothing is
//! stored until the callback comes back to the same session with a code.

use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{ConnectionResult, RefreshEngine};
use crate::crypto::Crypto;
use crate::providers;
use crate::storage::connections::{self, Connection};
use crate::storage::{Db, StorageError, UtcTime};

/// How long a started connect stays valid.
pub const STATE_LIFETIME_SECS: i64 = 600;
/// The associated data of the sealed state.
const STATE_COLUMN: &str = "oauth.state";

/// A connect in flight, as sealed into `state`.
#[derive(Serialize, Deserialize)]
pub struct Flow {
    #[serde(rename = "c")]
    pub connection_id: i64,
    /// The starting session's token hash.
    #[serde(rename = "s")]
    session: String,
    #[serde(rename = "v")]
    verifier: String,
    #[serde(rename = "r")]
    redirect_uri: String,
    /// Unix seconds.
    #[serde(rename = "t")]
    started: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("this connection's platform has no consent screen to connect through; paste its tokens instead")]
    NoConsent,
    #[error("save the connection's client id (or app id) first")]
    MissingClient,
    #[error("connect from a signed-in browser session (an API token cannot follow the consent screen)")]
    NeedsSession,
    #[error("this sign-in link is not valid; start again from the connection's page")]
    BadState,
    #[error("this sign-in started more than 10 minutes ago; start again from the connection's page")]
    Expired,
    #[error("this sign-in was started from another session; start again from the connection's page")]
    OtherSession,
    #[error("the platform did not give access: {0}")]
    Denied(String),
    #[error("no connection {0}")]
    NotFound(i64),
    #[error(transparent)]
    Storage(StorageError),
}

impl From<StorageError> for ConnectError {
    fn from(e: StorageError) -> Self {
        ConnectError::Storage(e)
    }
}

/// The consent screen's URL for `connection`, with a fresh PKCE pair and sealed state.
pub fn start(
    crypto: &Crypto,
    connection: &Connection,
    session: &str,
    redirect_uri: &str,
    at: UtcTime,
) -> Result<String, ConnectError> {
    let provider = providers::provider_for(&connection.provider).ok_or(ConnectError::NoConsent)?;
    let secrets = connections::secrets(crypto, connection)?;
    if provider.choices().iter().all(|c| !c.consent) {
        return Err(ConnectError::NoConsent);
    }
    let consent = provider
        .consent(connection, &secrets)
        .ok_or(ConnectError::MissingClient)?;
    // 32 random bytes: a 43-character verifier of the allowed alphabet.
    let verifier = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let flow = Flow {
        connection_id: connection.id,
        session: session.to_owned(),
        verifier,
        redirect_uri: redirect_uri.to_owned(),
        started: at.timestamp(),
    };
    let sealed = crypto.encrypt(
        STATE_COLUMN,
        &serde_json::to_vec(&flow).map_err(|_| ConnectError::BadState)?,
    );
    let state = URL_SAFE_NO_PAD.encode(sealed);
    let mut url = url::Url::parse(&consent.authorize_url).map_err(|_| ConnectError::NoConsent)?;
    {
        let mut query = url.query_pairs_mut();
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", &consent.client_id)
            .append_pair("redirect_uri", redirect_uri);
        if !consent.scopes.is_empty() {
            query.append_pair("scope", &consent.scopes);
        }
        query
            .append_pair("state", &state)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        for (key, value) in &consent.extra {
            query.append_pair(key, value);
        }
    }
    Ok(url.to_string())
}

/// Opens the state a callback brought back: sealed by us, from this session, not too old.
pub fn open(crypto: &Crypto, state: &str, session: &str, at: UtcTime) -> Result<Flow, ConnectError> {
    let sealed = URL_SAFE_NO_PAD
        .decode(state.trim_end_matches('='))
        .map_err(|_| ConnectError::BadState)?;
    let plain = crypto
        .decrypt(STATE_COLUMN, &sealed)
        .map_err(|_| ConnectError::BadState)?;
    let flow: Flow = serde_json::from_slice(&plain).map_err(|_| ConnectError::BadState)?;
    let session_matches: bool =
        subtle::ConstantTimeEq::ct_eq(flow.session.as_bytes(), session.as_bytes()).into();
    if !session_matches {
        return Err(ConnectError::OtherSession);
    }
    let age = at.timestamp() - flow.started;
    if !(0..=STATE_LIFETIME_SECS).contains(&age) {
        return Err(ConnectError::Expired);
    }
    Ok(flow)
}

/// Exchanges the code for tokens and records the outcome (refresh log trigger `connect`).
pub async fn finish(
    db: &Db,
    crypto: &Crypto,
    http: &reqwest::Client,
    engine: &RefreshEngine,
    flow: &Flow,
    code: &str,
    actor: &str,
) -> Result<ConnectionResult, ConnectError> {
    let connection = connections::get_connection(db, flow.connection_id)
        .await
        .map_err(|e| match e {
            StorageError::NotFound => ConnectError::NotFound(flow.connection_id),
            other => other.into(),
        })?;
    let provider = providers::provider_for(&connection.provider).ok_or(ConnectError::NoConsent)?;
    let secrets = connections::secrets(crypto, &connection)?;
    let started = Instant::now();
    let outcome = provider
        .exchange_code(
            http,
            &connection,
            &secrets,
            code,
            &flow.verifier,
            &flow.redirect_uri,
        )
        .await;
    Ok(engine
        .connected(&connection, outcome, actor, started.elapsed())
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crypto() -> Crypto {
        Crypto::new(&[7u8; 32], &[])
    }

    fn flow_state(crypto: &Crypto, session: &str, started: i64) -> String {
        let flow = Flow {
            connection_id: 3,
            session: session.into(),
            verifier: "v".repeat(43),
            redirect_uri: "http://x/oauth/callback".into(),
            started,
        };
        URL_SAFE_NO_PAD.encode(crypto.encrypt(STATE_COLUMN, &serde_json::to_vec(&flow).unwrap_or_default()))
    }

    #[test]
    fn state_opens_only_in_its_session_within_ten_minutes() {
        let crypto = crypto();
        let at = crate::storage::now();
        let state = flow_state(&crypto, "session-a", at.timestamp());
        assert_eq!(
            open(&crypto, &state, "session-a", at)
                .map(|f| f.connection_id)
                .ok(),
            Some(3)
        );
        assert!(matches!(
            open(&crypto, &state, "session-b", at),
            Err(ConnectError::OtherSession)
        ));
        let old = flow_state(&crypto, "session-a", at.timestamp() - STATE_LIFETIME_SECS - 1);
        assert!(matches!(
            open(&crypto, &old, "session-a", at),
            Err(ConnectError::Expired)
        ));
        assert!(matches!(
            open(&crypto, "forged", "session-a", at),
            Err(ConnectError::BadState)
        ));
        let other_key = Crypto::new(&[8u8; 32], &[]);
        assert!(matches!(
            open(&other_key, &state, "session-a", at),
            Err(ConnectError::BadState)
        ));
    }
}
