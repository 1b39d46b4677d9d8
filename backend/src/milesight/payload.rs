//! Milesight (MDP) webhook requests: signature, freshness, replay, and body parsing.
//! Pure functions and types; storing is `intake`'s job. Shapes follow `apis.md` §1.5.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Mutex;

use chrono::{DateTime, TimeZone, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde::de::IgnoredAny;
use serde_json::Value;
use serde_json::value::RawValue;
use sha2::Sha256;

use crate::storage::UtcTime;

mod fields;

use fields::{BatteryField, EventFields, Loose, MaybeObject};

pub const HEADER_UUID: &str = "x-msc-webhook-uuid";
pub const HEADER_TIMESTAMP: &str = "x-msc-request-timestamp";
pub const HEADER_NONCE: &str = "x-msc-request-nonce";
pub const HEADER_SIGNATURE: &str = "x-msc-request-signature";

/// Why a webhook request was refused. Each maps to one status and one stable code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    MissingSignature,
    UnknownWebhook,
    BadSignature,
    WrongSource,
    BadTimestamp,
    Expired { skew_secs: i64 },
    Replayed,
    TooLarge { limit: usize },
    UnsupportedMediaType(String),
    Malformed(String),
    InvalidEvent(String),
    InvalidSource,
}

impl Rejection {
    pub fn status(&self) -> u16 {
        match self {
            Rejection::MissingSignature
            | Rejection::UnknownWebhook
            | Rejection::BadSignature
            | Rejection::WrongSource => 401,
            Rejection::Replayed => 409,
            Rejection::TooLarge { .. } => 413,
            Rejection::UnsupportedMediaType(_) => 415,
            Rejection::BadTimestamp
            | Rejection::Expired { .. }
            | Rejection::Malformed(_)
            | Rejection::InvalidEvent(_)
            | Rejection::InvalidSource => 400,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Rejection::MissingSignature => "missing_signature",
            Rejection::UnknownWebhook => "unknown_webhook",
            Rejection::BadSignature => "bad_signature",
            Rejection::WrongSource => "wrong_source",
            Rejection::BadTimestamp => "bad_timestamp",
            Rejection::Expired { .. } => "request_expired",
            Rejection::Replayed => "replayed_nonce",
            Rejection::TooLarge { .. } => "too_large",
            Rejection::UnsupportedMediaType(_) => "unsupported_media_type",
            Rejection::Malformed(_) => "malformed",
            Rejection::InvalidEvent(_) => "invalid_event",
            Rejection::InvalidSource => "invalid_source",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Rejection::MissingSignature => format!(
                "missing one of the {HEADER_TIMESTAMP}, {HEADER_NONCE} and {HEADER_SIGNATURE} headers"
            ),
            Rejection::UnknownWebhook => "no webhook secret is configured for this webhook uuid".into(),
            Rejection::BadSignature => "signature does not match".into(),
            Rejection::WrongSource => "this webhook uuid belongs to another source".into(),
            Rejection::BadTimestamp => format!("{HEADER_TIMESTAMP} must be Unix seconds"),
            Rejection::Expired { skew_secs } => {
                format!("request timestamp is {skew_secs} s away from the server clock")
            }
            Rejection::Replayed => "this request nonce was already used".into(),
            Rejection::TooLarge { limit } => format!("body exceeds {limit} bytes"),
            Rejection::UnsupportedMediaType(ct) => format!("expected application/json, got {ct}"),
            Rejection::Malformed(why) => format!("body is not valid JSON: {why}"),
            Rejection::InvalidEvent(why) => format!("invalid event: {why}"),
            Rejection::InvalidSource => "source names are 1-64 letters, digits, '-' or '_'".into(),
        }
    }
}

/// Lower-case hex HMAC-SHA256 over `timestamp + nonce`, keyed by the webhook secret.
pub fn sign(secret: &str, timestamp: &str, nonce: &str) -> String {
    hex::encode(mac(secret, timestamp, nonce).finalize().into_bytes())
}

/// Checks a signature in constant time (HMAC's own `verify_slice`).
pub fn verify(secret: &str, timestamp: &str, nonce: &str, signature_hex: &str) -> bool {
    let Ok(signature) = hex::decode(signature_hex.trim()) else {
        return false;
    };
    mac(secret, timestamp, nonce).verify_slice(&signature).is_ok()
}

fn mac(secret: &str, timestamp: &str, nonce: &str) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail; an empty MAC would never verify.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| {
        <Hmac<Sha256> as KeyInit>::new_from_slice(&[0u8; 32]).unwrap_or_else(|_| unreachable!())
    });
    mac.update(timestamp.as_bytes());
    mac.update(nonce.as_bytes());
    mac
}

/// Parses the timestamp header and checks it is within `tolerance_secs` of `now` either way.
pub fn check_freshness(timestamp: &str, now: DateTime<Utc>, tolerance_secs: i64) -> Result<i64, Rejection> {
    let sent: i64 = timestamp.trim().parse().map_err(|_| Rejection::BadTimestamp)?;
    // Saturating: a header of i64::MIN must be refused, not overflow (found by proptest).
    let skew = now.timestamp().saturating_sub(sent);
    if skew.unsigned_abs() > tolerance_secs.unsigned_abs() {
        return Err(Rejection::Expired { skew_secs: skew });
    }
    Ok(sent)
}

/// Remembers nonces for at least one freshness window, so a captured request cannot be
/// replayed while its timestamp is still accepted. Two generations bound the memory, each
/// spanning two windows (a timestamp is accepted that far either side of now): a nonce is
/// forgotten between two and four windows after it was seen, by when its timestamp has expired.
///
/// Nonces are kept as 64-bit keyed hashes (8 bytes, not a string), and a generation holds at
/// most `GENERATION_CAP` of them: under a flood the generations turn over early, which
/// shortens the replay memory but never grows the process. A replay that gets past it is
/// still only a duplicate: events are stored once per (source, event id).
pub struct ReplayGuard {
    window_secs: i64,
    hasher: std::hash::RandomState,
    state: Mutex<Generations>,
}

/// About 40 s of requests at 15,000 a second; two generations stay under 20 MB.
const GENERATION_CAP: usize = 600_000;

struct Generations {
    started_at: i64,
    current: HashSet<u64>,
    previous: HashSet<u64>,
}

impl ReplayGuard {
    pub fn new(window_secs: i64) -> ReplayGuard {
        ReplayGuard {
            window_secs: window_secs.max(1),
            hasher: std::hash::RandomState::new(),
            state: Mutex::new(Generations {
                started_at: 0,
                current: HashSet::new(),
                previous: HashSet::new(),
            }),
        }
    }

    fn key(&self, nonce: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(nonce)
    }

    /// True when the nonce was already used by an accepted request within the window.
    pub fn seen(&self, nonce: &str, now_secs: i64) -> bool {
        let key = self.key(nonce);
        let Ok(mut g) = self.state.lock() else {
            return false;
        };
        self.rotate(&mut g, now_secs);
        g.previous.contains(&key) || g.current.contains(&key)
    }

    /// Remembers the nonce of an accepted request. Only accepted ones: a sender retrying a
    /// request that failed (say, with a 503) must not be refused as a replay.
    pub fn remember(&self, nonce: &str, now_secs: i64) {
        let key = self.key(nonce);
        let Ok(mut g) = self.state.lock() else { return };
        self.rotate(&mut g, now_secs);
        if g.current.len() >= GENERATION_CAP {
            g.previous = std::mem::take(&mut g.current);
            g.started_at = now_secs;
        }
        g.current.insert(key);
    }

    fn rotate(&self, g: &mut Generations, now_secs: i64) {
        // The freshness window extends both ways, so a generation spans two windows.
        if now_secs - g.started_at >= 2 * self.window_secs {
            g.previous = std::mem::take(&mut g.current);
            g.started_at = now_secs;
        }
    }

    /// Nonces remembered now (both generations).
    pub fn remembered(&self) -> usize {
        self.state
            .lock()
            .map(|g| g.current.len() + g.previous.len())
            .unwrap_or_default()
    }
}

/// Identity fields from an event's `deviceProfile`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceIdentity {
    pub sn: String,
    pub dev_eui: Option<String>,
    pub device_id: Option<String>,
    pub name: Option<String>,
    pub model: Option<String>,
}

/// One event of a webhook body, normalised across the spellings MDP uses.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedEvent {
    pub event_id: String,
    pub event_type: String,
    /// When the reading was taken: `data.ts` (ms) when present, else `eventCreatedTime` (s).
    pub event_time: Option<UtcTime>,
    /// `data.type` for DEVICE_DATA (PROPERTY, EVENT, SERVICE, ONLINE, OFFLINE) and TASK_DATA.
    pub data_type: Option<String>,
    pub device: Option<DeviceIdentity>,
    /// `data.payload` as received (JSON text), unless absent or null.
    pub payload: Option<String>,
    /// Battery percentage when the payload reports one (`payload.battery`, 0-100).
    pub battery: Option<i32>,
    /// `data.message` of a SYSTEM_MESSAGES event, as compact JSON.
    pub system_message: Option<String>,
    /// The whole event as received (JSON text), which is what gets stored.
    pub raw: String,
}

/// How deep a body's arrays and objects may nest: serde_json's own limit when it builds values,
/// so every stored event can be read back.
const MAX_NESTING: usize = 128;

/// Parses a body: a JSON array of events, or one event object.
pub fn parse_body(body: &[u8]) -> Result<Vec<ParsedEvent>, Rejection> {
    let malformed = |e: serde_json::Error| Rejection::Malformed(e.to_string());
    let events: Vec<&RawValue> = match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => serde_json::from_slice(body).map_err(malformed)?,
        Some(b'{') => vec![serde_json::from_slice(body).map_err(malformed)?],
        _ => {
            serde_json::from_slice::<IgnoredAny>(body).map_err(malformed)?;
            return Err(Rejection::Malformed(
                "expected an array of events or one event object".into(),
            ));
        }
    };
    if !fields::nesting_within(body, MAX_NESTING) {
        return Err(Rejection::Malformed(format!(
            "arrays and objects nest deeper than {MAX_NESTING} levels"
        )));
    }
    events
        .iter()
        .enumerate()
        .map(|(i, e)| parse_event(e).map_err(|why| Rejection::InvalidEvent(format!("event {i}: {why}"))))
        .collect()
}

fn parse_event(raw: &RawValue) -> Result<ParsedEvent, String> {
    let event = serde_json::from_str::<MaybeObject<EventFields>>(raw.get())
        .map_err(|e| e.to_string())?
        .0
        .ok_or("not an object")?;
    let event_id = if event.event_id.is_null() {
        event.event_id_upper
    } else {
        event.event_id
    };
    let event_id = event_id
        .scalar_text()
        .filter(|s| !s.is_empty() && s.len() <= 200)
        .ok_or("eventId is missing or not a short string")?;
    let event_type = event
        .event_type
        .text()
        .filter(|s| !s.is_empty() && s.len() <= 64)
        .ok_or("eventType is missing")?
        .into_owned();
    let created = event.created.scalar_text().and_then(|s| s.parse::<i64>().ok());
    let data = event.data.unwrap_or_default();
    let event_time = match (data.ts.as_i64(), created) {
        (Some(ms), _) => Utc.timestamp_millis_opt(ms).single(),
        (None, Some(secs)) => Utc.timestamp_opt(secs, 0).single(),
        (None, None) => None,
    }
    .map(UtcTime::new);
    let device = data.profile.and_then(|p| {
        let text = |value: Loose| value.scalar_text().filter(|s| !s.is_empty());
        Some(DeviceIdentity {
            sn: text(p.sn)?,
            dev_eui: text(p.dev_eui),
            device_id: text(p.device_id),
            name: text(p.name),
            model: text(p.model),
        })
    });
    let payload = data.payload.filter(|p| p.get() != "null");
    let battery = payload
        .and_then(|p| serde_json::from_str::<MaybeObject<BatteryField>>(p.get()).ok())
        .and_then(|p| p.0)
        .and_then(|p| p.battery.as_f64())
        .filter(|v| (0.0..=100.0).contains(v))
        .map(|v| v.round() as i32);
    // Rare (SYSTEM_MESSAGES only), so simply read whole and written back compact.
    let system_message = (event_type == "SYSTEM_MESSAGES")
        .then_some(data.message)
        .flatten()
        .and_then(|m| serde_json::from_str::<Value>(m.get()).ok())
        .map(|m| m.to_string());
    Ok(ParsedEvent {
        event_id,
        event_type,
        event_time,
        data_type: data.data_type.text().map(Cow::into_owned),
        device,
        payload: payload.map(|p| p.get().to_owned()),
        battery,
        system_message,
        raw: raw.get().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_an_independent_vector() {
        // Computed with: printf '%s' 17428724486b1e-nonce | openssl dgst -sha256 -hmac whsec-test
        let expected = "43231f9381a45a0822eac4e0e3d2970535c11a671274e7beee9a36a50357680c";
        let ours = sign("whsec-test", "1742872448", "6b1e-nonce");
        assert_eq!(ours, expected);
        assert!(verify("whsec-test", "1742872448", "6b1e-nonce", expected));
        assert!(
            verify("whsec-test", "1742872448", "6b1e-nonce", &expected.to_uppercase()),
            "hex case is not significant"
        );
        assert!(!verify("other", "1742872448", "6b1e-nonce", &ours));
        assert!(
            !verify("whsec-test", "1742872449", "6b1e-nonce", &ours),
            "timestamp is covered"
        );
        assert!(
            !verify("whsec-test", "1742872448", "6b1e-noncf", &ours),
            "nonce is covered"
        );
        assert!(!verify("whsec-test", "1742872448", "6b1e-nonce", "zz"));
    }

    #[test]
    fn freshness_window_applies_both_ways() {
        let now = Utc.timestamp_opt(1_000_000, 0).unwrap();
        assert_eq!(check_freshness("1000000", now, 300), Ok(1_000_000));
        assert!(check_freshness("999700", now, 300).is_ok());
        assert_eq!(
            check_freshness("999699", now, 300),
            Err(Rejection::Expired { skew_secs: 301 })
        );
        assert_eq!(
            check_freshness("1000301", now, 300),
            Err(Rejection::Expired { skew_secs: -301 })
        );
        assert_eq!(check_freshness("soon", now, 300), Err(Rejection::BadTimestamp));
    }

    #[test]
    fn replay_guard_remembers_nonces_for_the_window() {
        let guard = ReplayGuard::new(300);
        assert!(!guard.seen("n1", 1000));
        guard.remember("n1", 1000);
        assert!(guard.seen("n1", 1100));
        assert!(!guard.seen("n2", 1100));
        // After one rotation the nonce is still remembered (previous generation)...
        assert!(guard.seen("n1", 1700));
        // ...and forgotten only after two, when its timestamp can no longer pass freshness.
        assert!(!guard.seen("n1", 2400));
    }

    #[test]
    fn replay_memory_is_bounded_under_a_flood() {
        let guard = ReplayGuard::new(300);
        for i in 0..(2 * GENERATION_CAP + 10) {
            guard.remember(&format!("flood-{i}"), 1000);
        }
        assert!(guard.remembered() <= 2 * GENERATION_CAP);
        let newest = format!("flood-{}", 2 * GENERATION_CAP + 9);
        assert!(guard.seen(&newest, 1000), "recent nonces are still refused");
        assert!(
            !guard.seen("flood-0", 1000),
            "the oldest went with an early turnover"
        );
    }

    #[test]
    fn parses_arrays_single_objects_and_both_spellings() {
        let array = br#"[{"eventId":"a1","eventCreatedTime":"1742872448","eventType":"DEVICE_DATA",
            "data":{"deviceProfile":{"deviceId":"1904371063669395457","sn":"6707E0461016XXXX","devEUI":"24D124707E04XXXX",
            "name":"Demo","model":"AM319"},"type":"PROPERTY","tslId":"","ts":1742872448123,"payload":{"temperature":22.4,"battery":91}}}]"#;
        let events = parse_body(array).unwrap();
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!(
            (e.event_id.as_str(), e.event_type.as_str()),
            ("a1", "DEVICE_DATA")
        );
        assert_eq!(
            e.event_time.unwrap().timestamp_millis(),
            1_742_872_448_123,
            "data.ts wins"
        );
        assert_eq!(e.data_type.as_deref(), Some("PROPERTY"));
        let device = e.device.as_ref().unwrap();
        assert_eq!(device.sn, "6707E0461016XXXX");
        assert_eq!(device.device_id.as_deref(), Some("1904371063669395457"));
        assert_eq!(e.battery, Some(91));

        let single = br#"{"eventID":"b2","eventCreatedTime":1742872448,"eventType":"DEVICE_DATA",
            "data":{"deviceProfile":{"deviceId":1904371063669395457,"sn":"S2"},"type":"ONLINE","tslID":""}}"#;
        let events = parse_body(single).unwrap();
        assert_eq!(events[0].event_id, "b2");
        assert_eq!(
            events[0].event_time.unwrap().timestamp(),
            1_742_872_448,
            "eventCreatedTime as a number"
        );
        assert_eq!(
            events[0].device.as_ref().unwrap().device_id.as_deref(),
            Some("1904371063669395457")
        );
    }

    #[test]
    fn parses_every_event_type() {
        let body = br#"[
            {"eventId":"t","eventCreatedTime":"1","eventType":"WEBHOOK_TEST","data":"Test Milesight Webhook Successfully."},
            {"eventId":"k","eventCreatedTime":"1","eventType":"TASK_DATA","data":{"type":"CONFIG","info":{"taskId":"9","status":"SUCCESS"}}},
            {"eventId":"s","eventCreatedTime":"1","eventType":"SYSTEM_MESSAGES","data":{"type":"SYSTEM_ALERT","message":{"errCode":"push_stopped","info":"stopped"}}},
            {"eventId":"u","eventCreatedTime":"1","eventType":"SOMETHING_NEW","data":{"x":1}}
        ]"#;
        let events = parse_body(body).unwrap();
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(
            types,
            ["WEBHOOK_TEST", "TASK_DATA", "SYSTEM_MESSAGES", "SOMETHING_NEW"]
        );
        assert!(events[0].device.is_none() && events[0].payload.is_none());
        assert_eq!(events[1].data_type.as_deref(), Some("CONFIG"));
        assert!(
            events[2]
                .system_message
                .as_deref()
                .unwrap()
                .contains("push_stopped")
        );
        assert_eq!(events[2].data_type.as_deref(), Some("SYSTEM_ALERT"));
    }

    #[test]
    fn refuses_what_cannot_be_stored_safely() {
        assert!(matches!(parse_body(b"{not json"), Err(Rejection::Malformed(_))));
        assert!(matches!(parse_body(b"42"), Err(Rejection::Malformed(_))));
        assert!(matches!(
            parse_body(&[0xff, 0xfe, 0x00]),
            Err(Rejection::Malformed(_))
        ));
        let deep = "[".repeat(500) + &"]".repeat(500);
        assert!(
            matches!(parse_body(deep.as_bytes()), Err(Rejection::Malformed(_))),
            "recursion is bounded"
        );
        let deep_payload = format!(
            r#"{{"eventId":"d","eventType":"DEVICE_DATA","data":{{"payload":{}1{}}}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        assert!(
            matches!(parse_body(deep_payload.as_bytes()), Err(Rejection::Malformed(_))),
            "a payload nested too deep to be read back is refused, not stored"
        );
        let brackets_in_strings = format!(
            r#"{{"eventId":"s","eventType":"DEVICE_DATA","data":{{"payload":{{"note":"{}"}}}}}}"#,
            "[{".repeat(200)
        );
        assert!(
            parse_body(brackets_in_strings.as_bytes()).is_ok(),
            "brackets inside strings do not count as nesting"
        );
        assert!(matches!(
            parse_body(br#"[{"eventType":"DEVICE_DATA"}]"#),
            Err(Rejection::InvalidEvent(_))
        ));
        assert!(matches!(
            parse_body(br#"[{"eventId":"x"}]"#),
            Err(Rejection::InvalidEvent(_))
        ));
        assert_eq!(parse_body(b"[]").unwrap(), vec![]);
    }
}
