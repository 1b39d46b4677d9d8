//! Fake third-party servers that follow the documented shapes (`../shared/design/apis.md`).

use std::sync::{Arc, Mutex};

use crate::nonce;

/// An OAuth 2.0 authorization server on 127.0.0.1 (apis.md §6) for the consent-screen tests:
/// `GET /authorize` consents at once, sending the browser back to the `redirect_uri` with a
/// code (`?deny=1` in the authorize URL refuses instead); `POST /token` exchanges the code only
/// with the PKCE verifier whose S256 challenge came with it and the same redirect URI, once,
/// and refreshes with the refresh token it issued.
pub struct FakeAuthorizationServer {
    pub server: wiremock::MockServer,
    pub client_id: &'static str,
    pub client_secret: &'static str,
}

impl FakeAuthorizationServer {
    pub async fn start() -> FakeAuthorizationServer {
        use base64::Engine;
        use sha2::Digest;
        use wiremock::matchers::{method, path};
        use wiremock::{Mock, ResponseTemplate};

        #[derive(Default)]
        struct Grants {
            /// code → (challenge, redirect_uri)
            codes: std::collections::HashMap<String, (String, String)>,
            issued: usize,
        }
        let grants = Arc::new(Mutex::new(Grants::default()));
        let server = wiremock::MockServer::start().await;
        let client_id = "fake-client";
        let client_secret = "CANARY-fake-client-secret";

        let at_authorize = grants.clone();
        Mock::given(method("GET"))
            .and(path("/authorize"))
            .respond_with(move |request: &wiremock::Request| {
                let query: std::collections::HashMap<String, String> =
                    request.url.query_pairs().into_owned().collect();
                let redirect = query.get("redirect_uri").cloned().unwrap_or_default();
                let state = query.get("state").cloned().unwrap_or_default();
                let ok = query.get("response_type").map(String::as_str) == Some("code")
                    && query.get("client_id").map(String::as_str) == Some(client_id)
                    && query.get("code_challenge_method").map(String::as_str) == Some("S256");
                if !ok {
                    return ResponseTemplate::new(400).set_body_string("bad authorization request");
                }
                let mut target =
                    url::Url::parse(&redirect).unwrap_or_else(|e| panic!("redirect_uri {redirect}: {e}"));
                if query.contains_key("deny") {
                    target
                        .query_pairs_mut()
                        .append_pair("error", "access_denied")
                        .append_pair("error_description", "The user denied access")
                        .append_pair("state", &state);
                } else {
                    let code = format!("CANARY-code-{}", nonce());
                    if let Ok(mut g) = at_authorize.lock() {
                        let challenge = query.get("code_challenge").cloned().unwrap_or_default();
                        g.codes.insert(code.clone(), (challenge, redirect.clone()));
                    }
                    target
                        .query_pairs_mut()
                        .append_pair("code", &code)
                        .append_pair("state", &state);
                }
                ResponseTemplate::new(302).insert_header("location", target.as_str())
            })
            .mount(&server)
            .await;

        let at_token = grants.clone();
        Mock::given(method("POST"))
            .and(path("/token"))
            .respond_with(move |request: &wiremock::Request| {
                let form: std::collections::HashMap<String, String> =
                    url::form_urlencoded::parse(&request.body).into_owned().collect();
                let refused = |error: &str| {
                    ResponseTemplate::new(400).set_body_json(serde_json::json!({"error": error}))
                };
                let basic =
                    base64::engine::general_purpose::STANDARD.encode(format!("{client_id}:{client_secret}"));
                let authenticated = request
                    .headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v == format!("Basic {basic}"))
                    || (form.get("client_id").map(String::as_str) == Some(client_id)
                        && form.get("client_secret").map(String::as_str) == Some(client_secret));
                if !authenticated {
                    return ResponseTemplate::new(401)
                        .set_body_json(serde_json::json!({"error": "invalid_client"}));
                }
                let Ok(mut g) = at_token.lock() else {
                    return ResponseTemplate::new(500);
                };
                match form.get("grant_type").map(String::as_str) {
                    Some("authorization_code") => {
                        let code = form.get("code").cloned().unwrap_or_default();
                        let Some((challenge, redirect)) = g.codes.remove(&code) else {
                            return refused("invalid_grant");
                        };
                        let verifier = form.get("code_verifier").cloned().unwrap_or_default();
                        let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD
                            .encode(sha2::Sha256::digest(verifier.as_bytes()));
                        if computed != challenge || form.get("redirect_uri") != Some(&redirect) {
                            return refused("invalid_grant");
                        }
                    }
                    Some("refresh_token") => {
                        if !form
                            .get("refresh_token")
                            .is_some_and(|t| t.starts_with("CANARY-fake-refresh-"))
                        {
                            return refused("invalid_grant");
                        }
                    }
                    _ => return refused("unsupported_grant_type"),
                }
                g.issued += 1;
                let n = g.issued;
                ResponseTemplate::new(200).set_body_json(serde_json::json!({
                    "access_token": format!("CANARY-fake-access-{n}"),
                    "token_type": "Bearer",
                    "expires_in": 3600,
                    "refresh_token": format!("CANARY-fake-refresh-{n}"),
                }))
            })
            .mount(&server)
            .await;
        FakeAuthorizationServer {
            server,
            client_id,
            client_secret,
        }
    }

    /// How many times a code was sent to be exchanged (`grant_type=authorization_code`).
    pub async fn code_exchanges(&self) -> usize {
        self.server
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .filter(|r| String::from_utf8_lossy(&r.body).contains("grant_type=authorization_code"))
            .count()
    }

    pub fn authorize_url(&self) -> String {
        format!("{}/authorize", self.server.uri())
    }

    pub fn token_url(&self) -> String {
        format!("{}/token", self.server.uri())
    }
}
