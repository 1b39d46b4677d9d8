//! Webhook intake: verify, parse and store a Milesight webhook request, and keep every
//! rejected request (bounded) for inspection. Free of HTTP types so it is testable directly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use secrecy::ExposeSecret;
use serde::Serialize;

use super::group_commit::GroupCommit;
use super::payload::{self, ParsedEvent, Rejection, ReplayGuard};
use super::settings::MilesightConfig;
use super::ui_webhooks::{WebhookSaveError, WebhookSecrets};
use crate::config::{WebhookConfig, valid_source_name};
use crate::crypto::Crypto;
use crate::storage::deliveries::{self, NewWebhookRejection, SourceTiming};
use crate::storage::devices::{DeviceActivity, DeviceProfile};
use crate::storage::ingest::{IncomingDevice, IncomingEvent, InsertOutcome, SourceEffect};
use crate::storage::{Db, DeviceStatus, StorageError, UtcTime, now};
use tokio_util::task::TaskTracker;

/// How much of a rejected body is kept for inspection.
const REJECTED_BODY_EXCERPT: usize = 2048;
/// Headers that may carry credentials of other systems; never stored.
const UNSTORED_HEADERS: &[&str] = &["authorization", "cookie", "proxy-authorization"];

/// A webhook request, as the HTTP layer hands it over.
pub struct WebhookRequest<'a> {
    /// `{source}` from `/webhooks/milesight/{source}`, if the URL has one.
    pub path_source: Option<&'a str>,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub remote_addr: Option<String>,
}

impl WebhookRequest<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }
}

/// A request whose signature, source and freshness hold.
struct Verified<'r> {
    source: String,
    nonce: &'r str,
    received: UtcTime,
}

#[derive(Debug, Clone, Serialize)]
pub struct Accepted {
    pub source: String,
    #[serde(flatten)]
    pub outcome: InsertOutcome,
}

#[derive(Debug)]
pub enum IntakeError {
    Rejected(Rejection),
    /// The database could not take the batch; nothing was stored, and the sender should retry.
    Storage(StorageError),
}

/// The instruments intake updates (`telltale_webhook_*`, `telltale_milesight_system_notices_total`).
#[derive(Clone)]
pub struct IntakeMetrics {
    pub requests: prometheus::IntCounterVec,
    pub events: prometheus::IntCounterVec,
    pub ingest_seconds: prometheus::Histogram,
    pub commit_requests: prometheus::Histogram,
    pub previous_secret: prometheus::IntCounterVec,
    pub system_notices: prometheus::IntCounterVec,
    /// The `source` label's values, bounded (`metrics::labels`).
    pub sources: std::sync::Arc<crate::metrics::labels::SourceLabels>,
}

/// Per-process intake state: the nonce memory, the source-name → id cache and the writers
/// that group-commit events.
pub struct Intake {
    db: Db,
    crypto: Arc<Crypto>,
    settings: MilesightConfig,
    metrics: IntakeMetrics,
    replay: ReplayGuard,
    source_ids: Mutex<HashMap<String, i64>>,
    writer: GroupCommit,
    /// The webhooks and their secrets: configured ones, then those entered in the UI.
    pub webhooks: WebhookSecrets,
}

impl Intake {
    /// Starts the group-commit writers on `tasks` (the shutdown tracker).
    pub fn new(
        db: Db,
        crypto: Arc<Crypto>,
        settings: &MilesightConfig,
        writers: usize,
        metrics: IntakeMetrics,
        tasks: &TaskTracker,
    ) -> Intake {
        Intake {
            replay: ReplayGuard::new(settings.timestamp_tolerance_secs.as_secs() as i64),
            source_ids: Mutex::new(HashMap::new()),
            writer: GroupCommit::start(
                db.clone(),
                settings.offline_policy(),
                writers.max(1),
                metrics.commit_requests.clone(),
                tasks,
            ),
            webhooks: WebhookSecrets::new(db.clone(), crypto.clone(), settings.webhooks.clone()),
            db,
            crypto,
            settings: settings.clone(),
            metrics,
        }
    }

    /// Commits what is queued and stops the writers (shutdown, once no request comes in).
    pub fn stop_writers(&self) {
        self.writer.stop();
    }

    /// Verifies and stores one request. A rejection is recorded before it is returned.
    pub async fn receive(&self, request: &WebhookRequest<'_>, body: &[u8]) -> Result<Accepted, IntakeError> {
        let started = Instant::now();
        let result = self.verify_and_store(request, body).await;
        match &result {
            Ok(accepted) => {
                let source = self.metrics.sources.label(&accepted.source);
                self.metrics
                    .requests
                    .with_label_values(&[&source, "accepted"])
                    .inc();
                self.metrics
                    .events
                    .with_label_values(&[&source, "stored"])
                    .inc_by(accepted.outcome.stored as u64);
                self.metrics
                    .events
                    .with_label_values(&[&source, "duplicate"])
                    .inc_by(accepted.outcome.duplicates as u64);
                self.metrics
                    .ingest_seconds
                    .observe(started.elapsed().as_secs_f64());
            }
            Err(IntakeError::Rejected(rejection)) => {
                self.record_rejection(request, body.len(), body, rejection).await;
            }
            Err(IntakeError::Storage(err)) => {
                let source = known_source_label(&self.webhooks.all().await, request);
                self.metrics
                    .requests
                    .with_label_values(&[&source, "unavailable"])
                    .inc();
                tracing::warn!(%source, error = %err, "webhook not stored; the sender will be asked to retry");
            }
        }
        result
    }

    async fn verify_and_store(
        &self,
        request: &WebhookRequest<'_>,
        body: &[u8],
    ) -> Result<Accepted, IntakeError> {
        let Verified {
            source,
            nonce,
            received,
        } = self.verify(request).await.map_err(IntakeError::Rejected)?;
        let parsed = payload::parse_body(body).map_err(IntakeError::Rejected)?;

        let source_id = self.source_id(&source).await.map_err(IntakeError::Storage)?;
        // Logged after the commit; taken first, as the events move into storage's hands.
        let notices: Vec<(String, Option<String>, String)> = parsed
            .iter()
            .filter_map(|e| {
                let notice = e.system_message.clone()?;
                Some((e.event_id.clone(), e.data_type.clone(), notice))
            })
            .collect();
        let incoming: Vec<IncomingEvent> = parsed
            .into_iter()
            .map(|e| into_incoming(e, source_id, received))
            .collect();
        let outcome = self
            .writer
            .store(source_id, received, incoming)
            .await
            .map_err(IntakeError::Storage)?;
        self.replay.remember(nonce, received.timestamp());

        for (event_id, data_type, notice) in &notices {
            self.metrics
                .system_notices
                .with_label_values(&[&self.metrics.sources.label(&source)])
                .inc();
            tracing::error!(
                %source,
                %event_id,
                kind = data_type.as_deref().unwrap_or("unknown"),
                %notice,
                "Milesight system notice: MDP may have stopped pushing webhooks or hit its daily limit"
            );
        }
        Ok(Accepted { source, outcome })
    }

    /// Everything about a request but its body: the signature (by the current secret, or the
    /// previous one while rotating), the source it names, freshness, replay, content type.
    async fn verify<'r>(&self, request: &'r WebhookRequest<'_>) -> Result<Verified<'r>, Rejection> {
        if request.path_source.is_some_and(|s| !valid_source_name(s)) {
            return Err(Rejection::InvalidSource);
        }
        let (Some(timestamp), Some(nonce), Some(signature)) = (
            request.header(payload::HEADER_TIMESTAMP),
            request.header(payload::HEADER_NONCE),
            request.header(payload::HEADER_SIGNATURE),
        ) else {
            return Err(Rejection::MissingSignature);
        };
        let hooks = self.webhooks.all().await;
        let Some(hook) = select_webhook(&hooks, request.header(payload::HEADER_UUID)) else {
            return Err(Rejection::UnknownWebhook);
        };
        if !payload::verify(hook.secret.expose_secret(), timestamp, nonce, signature) {
            let by_previous = hook.previous_secret.as_ref().is_some_and(|previous| {
                payload::verify(previous.expose_secret(), timestamp, nonce, signature)
            });
            if !by_previous {
                return Err(Rejection::BadSignature);
            }
            // Counted so operators can see when the old secret is no longer used and remove it.
            self.metrics
                .previous_secret
                .with_label_values(&[hook.source.as_str()])
                .inc();
        }
        let source = match (&hook.uuid, request.path_source) {
            (Some(_), Some(path)) if path != hook.source => return Err(Rejection::WrongSource),
            (Some(_), _) | (None, None) => hook.source.clone(),
            (None, Some(path)) => path.to_owned(),
        };
        let received = now();
        let tolerance = self.settings.timestamp_tolerance_secs.as_secs() as i64;
        payload::check_freshness(timestamp, received.0, tolerance)?;
        if self.replay.seen(nonce, received.timestamp()) {
            return Err(Rejection::Replayed);
        }
        if let Some(content_type) = request.header("content-type")
            && !content_type.to_ascii_lowercase().starts_with("application/json")
        {
            return Err(Rejection::UnsupportedMediaType(
                content_type.chars().take(100).collect(),
            ));
        }
        Ok(Verified {
            source,
            nonce,
            received,
        })
    }

    async fn source_id(&self, name: &str) -> Result<i64, StorageError> {
        if let Some(id) = self.source_ids.lock().ok().and_then(|ids| ids.get(name).copied()) {
            return Ok(id);
        }
        let id = deliveries::ensure_source(&self.db, name, source_timing(&self.settings)).await?;
        if let Ok(mut ids) = self.source_ids.lock() {
            ids.insert(name.to_owned(), id);
        }
        Ok(id)
    }

    /// Keeps a rejected request for inspection (headers without credentials, a body excerpt,
    /// the reason) and counts it. Best effort: a database outage must not turn a 4xx into a 5xx.
    pub async fn record_rejection(
        &self,
        request: &WebhookRequest<'_>,
        body_size: usize,
        body_start: &[u8],
        rejection: &Rejection,
    ) {
        let source = known_source_label(&self.webhooks.all().await, request);
        self.metrics
            .requests
            .with_label_values(&[&source, rejection.code()])
            .inc();
        let headers: serde_json::Map<String, serde_json::Value> = request
            .headers
            .iter()
            .filter(|(k, _)| !UNSTORED_HEADERS.contains(&k.as_str()))
            .map(|(k, v)| {
                (
                    k.clone(),
                    serde_json::Value::String(v.chars().take(512).collect()),
                )
            })
            .collect();
        let excerpt = &body_start[..body_start.len().min(REJECTED_BODY_EXCERPT)];
        let row = NewWebhookRejection {
            source_name: Some(source.clone()),
            reason: format!("{}: {}", rejection.code(), rejection.message()),
            status: i32::from(rejection.status()),
            remote_addr: request.remote_addr.clone(),
            headers: serde_json::Value::Object(headers).to_string(),
            body_excerpt: String::from_utf8_lossy(excerpt).into_owned(),
            body_size: body_size as i64,
            received_at: now(),
        };
        tracing::info!(%source, code = rejection.code(), status = rejection.status(), "webhook rejected");
        if let Err(err) = deliveries::record_rejection(&self.db, &row, self.settings.rejections_kept).await {
            tracing::warn!(error = %err, "could not record a rejected webhook");
        }
    }

    /// Writes the configured webhooks (uuid, sealed secret) to their sources, so the sources
    /// appear with their settings before any event arrives.
    pub async fn sync_configured_sources(&self) {
        for hook in &self.settings.webhooks {
            let secret = hook.secret.expose_secret();
            match deliveries::upsert_source(
                &self.db,
                &self.crypto,
                &hook.source,
                hook.uuid.as_deref(),
                Some(secret),
                source_timing(&self.settings),
            )
            .await
            {
                Ok(source) => {
                    if let Ok(mut ids) = self.source_ids.lock() {
                        ids.insert(source.name, source.id);
                    }
                }
                Err(err) => {
                    tracing::warn!(source = %hook.source, error = %err, "could not record a configured webhook source")
                }
            }
        }
    }
}

impl Intake {
    /// Saves a webhook entered in the UI and records its source, so it is listed (with its
    /// callback URL) before MDP sends anything.
    pub async fn save_ui_webhook(
        &self,
        source: &str,
        uuid: Option<&str>,
        secret: &str,
    ) -> Result<(), WebhookSaveError> {
        self.webhooks.save(source, uuid, secret).await?;
        let uuid = uuid.map(str::trim).filter(|u| !u.is_empty());
        let recorded = deliveries::upsert_source(
            &self.db,
            &self.crypto,
            source,
            uuid,
            Some(secret.trim()),
            source_timing(&self.settings),
        )
        .await?;
        if let Ok(mut ids) = self.source_ids.lock() {
            ids.insert(recorded.name, recorded.id);
        }
        Ok(())
    }
}

impl Intake {
    /// Removes the UI's webhooks of `source`; its events stay, and it no longer shows a secret.
    pub async fn remove_ui_webhook(&self, source: &str) -> Result<bool, WebhookSaveError> {
        if !self.webhooks.remove(source).await? {
            return Ok(false);
        }
        if !self.settings.webhooks.iter().any(|h| h.source == source) {
            deliveries::upsert_source(
                &self.db,
                &self.crypto,
                source,
                None,
                None,
                source_timing(&self.settings),
            )
            .await?;
        }
        Ok(true)
    }
}

/// The webhook whose secret applies: the one configured for this uuid, else the default.
fn select_webhook<'a>(hooks: &'a [WebhookConfig], uuid: Option<&str>) -> Option<&'a WebhookConfig> {
    hooks
        .iter()
        .find(|h| h.uuid.is_some() && h.uuid.as_deref() == uuid)
        .or_else(|| hooks.iter().find(|h| h.uuid.is_none()))
}

/// A metric label for a request not yet trusted: only configured source names, else
/// `unknown`, so unauthenticated callers cannot grow the label set.
fn known_source_label(hooks: &[WebhookConfig], request: &WebhookRequest<'_>) -> String {
    let by_uuid = request
        .header(payload::HEADER_UUID)
        .and_then(|uuid| hooks.iter().find(|h| h.uuid.as_deref() == Some(uuid)));
    match (by_uuid, request.path_source) {
        (Some(hook), _) => hook.source.clone(),
        (None, Some(path)) if hooks.iter().any(|h| h.source == path) => path.to_owned(),
        (None, None) if hooks.iter().any(|h| h.uuid.is_none()) => "default".into(),
        _ => "unknown".into(),
    }
}

/// What one parsed event means for storage: its row, its device's new state, its source.
/// Moves a parsed event into what storage takes: its strings change hands, none is copied
/// (a 50-event request would otherwise copy every id, name and raw event once more).
fn into_incoming(event: ParsedEvent, source_id: i64, received: UtcTime) -> IncomingEvent {
    let battery = event.battery;
    let is_device_data = event.event_type == "DEVICE_DATA";
    let effect = match (event.event_type.as_str(), event.system_message) {
        ("WEBHOOK_TEST", _) => SourceEffect::Verified,
        (_, Some(notice)) => SourceEffect::SystemNotice(notice),
        _ => SourceEffect::None,
    };
    let (data_type, payload) = (event.data_type, event.payload);
    let device = event.device.map(|identity| {
        let activity = is_device_data.then(|| {
            let status = match data_type.as_deref() {
                Some("OFFLINE") => DeviceStatus::Offline,
                _ => DeviceStatus::Online,
            };
            let carries_reading = matches!(data_type.as_deref(), Some("PROPERTY" | "EVENT"));
            DeviceActivity {
                status,
                last_seen_at: event.event_time.map_or(received, |t| t.min(received)),
                last_payload: carries_reading.then_some(payload).flatten(),
                last_event_type: data_type,
                battery,
                expected_interval_secs: None,
            }
        });
        IncomingDevice {
            sn: identity.sn,
            profile: DeviceProfile {
                source_id: Some(source_id),
                dev_eui: identity.dev_eui,
                mdp_device_id: identity.device_id,
                name: identity.name,
                model: identity.model,
            },
            activity,
        }
    });
    IncomingEvent {
        event_id: event.event_id,
        event_type: event.event_type,
        event_time: event.event_time,
        payload: event.raw,
        device,
        effect,
    }
}

fn source_timing(config: &MilesightConfig) -> SourceTiming {
    SourceTiming {
        period_secs: config.source_period_secs.as_secs() as i64,
        grace_secs: config.source_grace_secs.as_secs() as i64,
    }
}
