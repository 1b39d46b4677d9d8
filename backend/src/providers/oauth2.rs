//! The OAuth 2.0 token request (RFC 6749 §3.2) the OAuth providers share: a form POSTed to
//! the token endpoint with the client authenticated by HTTP Basic or in the body. Client
//! credentials, refresh and the code exchange after a consent screen all send it; each
//! provider reads the answer its platform gives.

use serde::Deserialize;

use super::{Answer, Outcome, unanswered};

/// How a platform wants the client to authenticate at its token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// HTTP Basic with client id and secret.
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Body,
}

/// The sealed credentials of an OAuth2 client.
#[derive(Deserialize)]
pub struct ClientCredentials {
    pub client_id: String,
    pub client_secret: Option<String>,
}

/// What the token endpoint answered, for the provider to read.
pub struct TokenAnswer {
    pub status: reqwest::StatusCode,
    /// The status's meaning (rate limited, unavailable, …) with any `Retry-After`.
    pub answer: Answer,
    pub body: Vec<u8>,
}

/// POSTs `form` to `token_url` with the client's authentication. An endpoint that does not
/// answer is a transient failure (the URL and `hide`, plus the client secret, kept out of the
/// message).
pub async fn post_token_form(
    http: &reqwest::Client,
    token_url: &str,
    auth: ClientAuth,
    client: &ClientCredentials,
    mut form: Vec<(&str, &str)>,
    hide: &[&str],
) -> Result<TokenAnswer, Outcome> {
    let mut request = http
        .post(token_url)
        .header(reqwest::header::ACCEPT, "application/json");
    match auth {
        ClientAuth::Basic => request = request.basic_auth(&client.client_id, client.client_secret.as_deref()),
        ClientAuth::Body => {
            form.push(("client_id", &client.client_id));
            if let Some(secret) = client.client_secret.as_deref() {
                form.push(("client_secret", secret));
            }
        }
    }
    let response = match request.form(&form).send().await {
        Ok(r) => r,
        Err(e) => {
            let mut hide = hide.to_vec();
            hide.extend(client.client_secret.as_deref());
            return Err(unanswered(e, &hide));
        }
    };
    let status = response.status();
    let answer = Answer::of(&response);
    let body = response.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
    Ok(TokenAnswer { status, answer, body })
}
