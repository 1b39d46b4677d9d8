//! A receiver of alert webhooks on 127.0.0.1 that checks each request the way the Standard
//! Webhooks specification tells a consumer to (its own code, not Telltale's): the signature
//! over `{webhook-id}.{webhook-timestamp}.{body}` with the endpoint's secret, a timestamp
//! within five minutes. A bad signature is refused with 401, and it can be told to answer
//! 503 for a while, as a receiver that is down.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// A signing secret for tests; it holds `CANARY`, so the harness finds it wherever it leaks.
pub const WEBHOOK_SECRET: &str = "whsec_CANARYCANARYCANARYCANARY";
/// The path every receiver listens on; it holds `CANARY` too, as a chat's webhook URL carries
/// its token in the path and must be kept as secret.
const PATH: &str = "/services/T000/B000/CANARY-webhook-path";
const TOLERANCE_SECS: i64 = 300;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub timestamp: i64,
    /// Had a `webhook-signature` header.
    pub signed: bool,
    /// Answered 2xx: the signature verified (or none was expected) and it was not told to fail.
    pub accepted: bool,
    pub content_type: String,
    pub body: serde_json::Value,
}

struct Checker {
    key: Option<Vec<u8>>,
    received: Arc<Mutex<Vec<Received>>>,
    refuse: Arc<AtomicUsize>,
}

fn header(request: &Request, name: &str) -> String {
    request
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

impl Checker {
    fn verify(&self, request: &Request, id: &str, timestamp: i64) -> Result<(), &'static str> {
        let Some(key) = &self.key else { return Ok(()) };
        if id.is_empty() {
            return Err("no webhook-id");
        }
        if (chrono::Utc::now().timestamp() - timestamp).abs() > TOLERANCE_SECS {
            return Err("webhook-timestamp is too far from now");
        }
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(&request.body);
        let expected = BASE64.encode(mac.finalize().into_bytes());
        // Several signatures may be sent (space-separated) while a secret rotates.
        let signatures = header(request, "webhook-signature");
        if signatures
            .split(' ')
            .filter_map(|s| s.strip_prefix("v1,"))
            .any(|s| s == expected)
        {
            Ok(())
        } else {
            Err("signature does not verify")
        }
    }
}

impl Respond for Checker {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let id = header(request, "webhook-id");
        let timestamp = header(request, "webhook-timestamp").parse().unwrap_or(0);
        let body_text = String::from_utf8_lossy(&request.body).into_owned();
        crate::assert_no_canary("an alert webhook's body", &body_text);
        let verdict = self.verify(request, &id, timestamp);
        let refused = self
            .refuse
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let accepted = verdict.is_ok() && !refused;
        self.received.lock().expect("receiver lock").push(Received {
            id,
            timestamp,
            signed: !header(request, "webhook-signature").is_empty(),
            accepted,
            content_type: header(request, "content-type"),
            body: serde_json::from_str(&body_text).unwrap_or(serde_json::Value::Null),
        });
        match verdict {
            Err(reason) => ResponseTemplate::new(401).set_body_string(reason),
            Ok(()) if refused => ResponseTemplate::new(503).set_body_string("try later"),
            Ok(()) => ResponseTemplate::new(204),
        }
    }
}

pub struct WebhookReceiver {
    server: MockServer,
    received: Arc<Mutex<Vec<Received>>>,
    refuse: Arc<AtomicUsize>,
}

impl WebhookReceiver {
    /// Verifies signatures with `secret` (`whsec_` + base64); accepts unsigned requests when `None`.
    pub async fn start(secret: Option<&str>) -> WebhookReceiver {
        let key = secret.map(|s| {
            BASE64
                .decode(s.strip_prefix("whsec_").expect("whsec_ secret"))
                .expect("base64 secret")
        });
        let server = MockServer::start().await;
        let received = Arc::new(Mutex::new(Vec::new()));
        let refuse = Arc::new(AtomicUsize::new(0));
        Mock::given(wiremock::matchers::method("POST"))
            .and(wiremock::matchers::path(PATH))
            .respond_with(Checker {
                key,
                received: received.clone(),
                refuse: refuse.clone(),
            })
            .mount(&server)
            .await;
        WebhookReceiver {
            server,
            received,
            refuse,
        }
    }

    pub fn url(&self) -> String {
        format!("{}{PATH}", self.server.uri())
    }

    /// Answers the next `n` requests with 503.
    pub fn refuse_next(&self, n: usize) {
        self.refuse.store(n, Ordering::SeqCst);
    }

    /// Every request so far, accepted or not, oldest first.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("receiver lock").clone()
    }

    /// The accepted requests, once there are `n` (or `within` has passed).
    pub async fn wait_for_accepted(&self, n: usize, within: Duration) -> Vec<Received> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let accepted: Vec<Received> = self.received().into_iter().filter(|r| r.accepted).collect();
            if accepted.len() >= n || std::time::Instant::now() >= deadline {
                return accepted;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
