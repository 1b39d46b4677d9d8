//! Column types whose SQL representation differs between PostgreSQL and SQLite.
//!
//! `schema.rs` is shared by both backends, so every type there must have a meaning on both.
//! Timestamps are the one real difference: `timestamptz` on PostgreSQL, text on SQLite.
//! The states rows move through (connection status, alert state, …) are enums stored as text:
//! their spelling lives here and nowhere else.

use chrono::{DateTime, SubsecRound, Utc};
use diesel::deserialize::{self, FromSql};
use diesel::pg::Pg;
use diesel::serialize::{self, IsNull, Output, ToSql};
use diesel::sql_types::{Timestamptz, TimestamptzSqlite};
use diesel::sqlite::Sqlite;

/// Declares a state stored as text: each variant with its one spelling (in the database, the
/// JSON API and the pages), with `ToSql`/`FromSql` for both backends and serde both ways.
macro_rules! text_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident = $text:literal ),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, diesel::expression::AsExpression, diesel::deserialize::FromSqlRow)]
        #[diesel(sql_type = diesel::sql_types::Text)]
        pub enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(text: &str) -> Result<Self, String> {
                match text {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "{other:?} is not a {}; expected one of {}",
                        stringify!($name),
                        [$($text),+].join(", ")
                    )),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                // `pad`, so widths in tables (`{:<14}`) apply.
                f.pad(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }

        impl ToSql<diesel::sql_types::Text, Pg> for $name {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
                <str as ToSql<diesel::sql_types::Text, Pg>>::to_sql(self.as_str(), out)
            }
        }

        impl ToSql<diesel::sql_types::Text, Sqlite> for $name {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Sqlite>) -> serialize::Result {
                out.set_value(self.as_str());
                Ok(IsNull::No)
            }
        }

        impl FromSql<diesel::sql_types::Text, Pg> for $name {
            fn from_sql(bytes: <Pg as diesel::backend::Backend>::RawValue<'_>) -> deserialize::Result<Self> {
                let text = <String as FromSql<diesel::sql_types::Text, Pg>>::from_sql(bytes)?;
                Ok(text.parse::<$name>()?)
            }
        }

        impl FromSql<diesel::sql_types::Text, Sqlite> for $name {
            fn from_sql(bytes: <Sqlite as diesel::backend::Backend>::RawValue<'_>) -> deserialize::Result<Self> {
                let text = <String as FromSql<diesel::sql_types::Text, Sqlite>>::from_sql(bytes)?;
                Ok(text.parse::<$name>()?)
            }
        }
    };
}

text_enum! {
    /// Where a connection's token stands (`connections.status`).
    pub enum ConnectionStatus {
        /// Holds a token that is being kept fresh.
        Active = "active",
        /// No token yet: the next refresh obtains one.
        Missing = "missing",
        /// Its token expired before it could be refreshed.
        Expired = "expired",
        /// Switched off by staff: sweeps and polls skip it.
        Disabled = "disabled",
        /// The platform refused the grant: a person must re-authorise it.
        NeedsReauth = "needs_reauth",
    }
}

impl ConnectionStatus {
    /// Cannot be used until a person acts (re-authorises or enables it).
    pub fn waits_for_a_person(self) -> bool {
        matches!(self, ConnectionStatus::Disabled | ConnectionStatus::NeedsReauth)
    }
}

text_enum! {
    /// What started a token refresh (`refresh_log.trigger`, the metrics' `trigger` label).
    pub enum RefreshTrigger {
        /// The scheduled sweep.
        Scheduled = "scheduled",
        /// The sweep at start-up.
        Startup = "startup",
        /// A person: the Refresh button or `POST /api/tokens/{id}/refresh`.
        Manual = "manual",
        /// A caller needed the Milesight token and the cached one was within its lead time.
        OnDemand = "on_demand",
        /// An external scheduler through `/api/cron/token-refresh`.
        CronEndpoint = "cron_endpoint",
        /// `telltale refresh-tokens`.
        Cli = "cli",
        /// Tokens forgotten by hand (Clear token).
        Clear = "clear",
        /// Tokens from a platform's consent screen.
        Connect = "connect",
        /// A poll found the token missing or about to expire.
        Poll = "poll",
        /// A poll's request was refused with 401: the token is refreshed once and retried.
        PollUnauthorized = "poll_401",
    }
}

text_enum! {
    /// What started a poll (`poll_runs.trigger`).
    pub enum PollTrigger {
        /// The scheduled sweep.
        Scheduled = "scheduled",
        /// A person: Poll now, or `POST /api/polling/{connection}/{endpoint}/run`.
        Manual = "manual",
        /// An external scheduler through `/api/cron/platform-polling`.
        CronEndpoint = "cron_endpoint",
        /// `telltale poll`.
        Cli = "cli",
    }
}

// By hand: `text_enum!` declares the derives, and only this state needs a default (a
// `PollRequest` built with `..Default::default()` is the scheduled sweep's).
#[allow(clippy::derivable_impls)]
impl Default for PollTrigger {
    fn default() -> PollTrigger {
        PollTrigger::Scheduled
    }
}

text_enum! {
    /// The rule an alert fired under (`alerts.rule`); `alerts::rules` has one function each.
    pub enum AlertRule {
        TokenRefreshFailing = "token_refresh_failing",
        TokenNeedsReauth = "token_needs_reauth",
        TokenRunway = "token_runway",
        PollFailing = "poll_failing",
        WebhookSourceStale = "webhook_source_stale",
        MilesightSystemNotice = "milesight_system_notice",
        DeviceOffline = "device_offline",
        /// Many devices of one source at once, as one alert.
        DevicesOffline = "devices_offline",
    }
}

text_enum! {
    /// How urgent an alert is (`alerts.severity`).
    pub enum Severity {
        Warning = "warning",
        High = "high",
    }
}

text_enum! {
    /// Where an alert stands (`alerts.state`).
    pub enum AlertState {
        Firing = "firing",
        /// Firing, and someone said they are on it: no reminders.
        Acknowledged = "acknowledged",
        /// Firing inside a silence: its emails are held back.
        Silenced = "silenced",
        Resolved = "resolved",
    }
}

text_enum! {
    /// A connection's token health as people see it (derived from its status, token and expiry).
    pub enum TokenHealth {
        Disabled = "disabled",
        NeedsReauth = "needs_reauth",
        /// No token.
        Missing = "missing",
        Expired = "expired",
        /// Within its lead time of expiry.
        Expiring = "expiring",
        Active = "active",
    }
}

text_enum! {
    /// What one refresh attempt came to (the engine's answer; the refresh log keeps it too).
    pub enum RefreshOutcome {
        Refreshed = "refreshed",
        /// A dry run: this one would be refreshed.
        WouldRefresh = "would_refresh",
        /// The platform refused the grant: a person must re-authorise it.
        NeedsReauth = "needs_reauth",
        Failed = "failed",
        /// Not attempted: disabled, waiting for re-authorisation, or refreshed elsewhere meanwhile.
        Skipped = "skipped",
    }
}

text_enum! {
    /// What Telltale knows of a device's connectivity (`devices.status`).
    pub enum DeviceStatus {
        /// Its last uplink said it is connected, and it has not been silent for too long.
        Online = "online",
        /// MDP said so, or it was silent past its expected interval.
        Offline = "offline",
        /// Known (from the inventory or an event without data) but never heard from.
        Unknown = "unknown",
    }
}

text_enum! {
    /// Whether a webhook source is delivering (derived from its last event, period and grace).
    pub enum SourceStatus {
        /// Its last event is within its period plus grace.
        Active = "ACTIVE",
        /// Nothing ever arrived, and it was set up less than its period plus grace ago: a new
        /// source waiting for its first event, not a broken one.
        Waiting = "WAITING",
        /// Nothing within its period plus grace (for a source that never delivered: since it
        /// was set up).
        Stale = "STALE",
    }
}

text_enum! {
    /// How a (connection, endpoint) pair's last poll ended (`poll_endpoint_state.status`).
    pub enum PollStatus {
        Ok = "ok",
        Failed = "failed",
        /// Not polled: its connection is switched off.
        Disabled = "disabled",
        /// Not polled: its connection waits for re-authorisation.
        NeedsReauth = "needs_reauth",
    }
}

text_enum! {
    /// What one poll came to, as sweeps, the API and the CLI report it.
    pub enum PollOutcome {
        Ok = "ok",
        Failed = "failed",
        /// Needs re-authorisation, disabled, or taken by another process.
        Skipped = "skipped",
        /// A dry run: this pair would be polled.
        WouldPoll = "would_poll",
    }
}

text_enum! {
    /// One entry of an alert's history (`alert_events.kind`).
    pub enum AlertEventKind {
        Fired = "fired",
        /// An email was queued (the detail says which).
        Notified = "notified",
        /// An email was not sent, and why (a silence).
        HeldBack = "held_back",
        Acknowledged = "acknowledged",
        Silenced = "silenced",
        Unsilenced = "unsilenced",
        Resolved = "resolved",
        /// A notification was given up undelivered (the detail says which, and its last error).
        NotificationFailed = "notification_failed",
    }
}

text_enum! {
    /// What a staff user may do (`staff_users.role`).
    pub enum Role {
        /// Everything, including changes.
        Admin = "admin",
        /// Reads only.
        Viewer = "viewer",
    }
}

impl AlertState {
    /// Still open: firing, acknowledged or silenced.
    pub const OPEN: [AlertState; 3] = [AlertState::Firing, AlertState::Acknowledged, AlertState::Silenced];

    /// The states a `?state=` filter names: one state, or `open` for the three open ones.
    pub fn selection(text: &str) -> Result<Vec<AlertState>, String> {
        match text {
            "open" => Ok(AlertState::OPEN.to_vec()),
            one => one.parse().map(|state| vec![state]).map_err(|_| {
                format!("state must be firing, acknowledged, silenced, resolved or open, got {one:?}")
            }),
        }
    }
}

/// A UTC instant: `timestamptz` on PostgreSQL; fixed-width UTC text on SQLite.
#[derive(diesel::sql_types::SqlType, diesel::query_builder::QueryId, Debug, Clone, Copy, Default)]
#[diesel(postgres_type(name = "timestamptz"))]
#[diesel(sqlite_type(name = "Text"))]
pub struct UtcTimestamp;

/// SQLite compares timestamps as text, so the encoding must be fixed-width: always six
/// fractional digits and an explicit zero offset (which SQLite's date functions also read).
const SQLITE_FORMAT: &str = "%Y-%m-%d %H:%M:%S%.6f+00:00";

/// A UTC instant as stored in a `UtcTimestamp` column. A newtype, because the orphan rule
/// forbids binding chrono's `DateTime` to a SQL type of ours; it derefs to `DateTime<Utc>`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    diesel::expression::AsExpression,
    diesel::deserialize::FromSqlRow,
    serde::Serialize,
    serde::Deserialize,
)]
#[diesel(sql_type = UtcTimestamp)]
#[serde(transparent)]
pub struct UtcTime(pub DateTime<Utc>);

impl UtcTime {
    /// Truncated to microseconds, the precision both backends store, so a value read back
    /// compares equal to the value written.
    pub fn new(at: DateTime<Utc>) -> UtcTime {
        UtcTime(at.trunc_subsecs(6))
    }
}

impl From<DateTime<Utc>> for UtcTime {
    fn from(at: DateTime<Utc>) -> UtcTime {
        UtcTime::new(at)
    }
}

impl std::ops::Deref for UtcTime {
    type Target = DateTime<Utc>;
    fn deref(&self) -> &DateTime<Utc> {
        &self.0
    }
}

impl std::fmt::Display for UtcTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}",
            self.0.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        )
    }
}

impl ToSql<UtcTimestamp, Pg> for UtcTime {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        <DateTime<Utc> as ToSql<Timestamptz, Pg>>::to_sql(&self.0, out)
    }
}

impl FromSql<UtcTimestamp, Pg> for UtcTime {
    fn from_sql(bytes: <Pg as diesel::backend::Backend>::RawValue<'_>) -> deserialize::Result<Self> {
        <DateTime<Utc> as FromSql<Timestamptz, Pg>>::from_sql(bytes).map(UtcTime)
    }
}

impl ToSql<UtcTimestamp, Sqlite> for UtcTime {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Sqlite>) -> serialize::Result {
        out.set_value(sqlite_text(&self.0));
        Ok(IsNull::No)
    }
}

impl FromSql<UtcTimestamp, Sqlite> for UtcTime {
    fn from_sql(mut bytes: <Sqlite as diesel::backend::Backend>::RawValue<'_>) -> deserialize::Result<Self> {
        // What `sqlite_text` wrote is read field by field; anything else (text written by
        // SQL, older rows) by diesel, which tries chrono's patterns one after another.
        if bytes.value_type() == Some(diesel::sqlite::SqliteType::Text)
            && let Some(at) = parse_sqlite_text(bytes.read_text())
        {
            return Ok(UtcTime(at));
        }
        <DateTime<Utc> as FromSql<TimestamptzSqlite, Sqlite>>::from_sql(bytes).map(UtcTime)
    }
}

/// Reads exactly the text `sqlite_text` writes for years 0-9999
/// (`YYYY-MM-DD HH:MM:SS.ffffff+00:00`); `None` for any other text.
fn parse_sqlite_text(text: &str) -> Option<DateTime<Utc>> {
    let b = text.as_bytes();
    if b.len() != 32 || &b[26..] != b"+00:00" {
        return None;
    }
    let punctuation = [
        (4, b'-'),
        (7, b'-'),
        (10, b' '),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
    ];
    if punctuation.iter().any(|&(i, c)| b[i] != c) {
        return None;
    }
    let number = |from: usize, to: usize| -> Option<u32> {
        b[from..to].iter().try_fold(0u32, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
        })
    };
    let date = chrono::NaiveDate::from_ymd_opt(number(0, 4)? as i32, number(5, 7)?, number(8, 10)?)?;
    let time = date.and_hms_micro_opt(number(11, 13)?, number(14, 16)?, number(17, 19)?, number(20, 26)?)?;
    Some(time.and_utc())
}

/// `SQLITE_FORMAT`, written field by field: chrono's `format` parses its pattern on every
/// call, and every row the webhook path writes binds several timestamps.
fn sqlite_text(at: &DateTime<Utc>) -> String {
    use chrono::{Datelike, Timelike};
    use std::fmt::Write;
    if !(0..=9999).contains(&at.year()) || at.nanosecond() >= 1_000_000_000 {
        // Years chrono writes with a sign, and leap seconds: rare enough for the slow path.
        return at.format(SQLITE_FORMAT).to_string();
    }
    let mut text = String::with_capacity(32);
    let _ = write!(
        text,
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}+00:00",
        at.year(),
        at.month(),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.nanosecond() / 1_000,
    );
    text
}

/// The current time, as stored.
pub fn now() -> UtcTime {
    UtcTime::new(Utc::now())
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Datelike, NaiveDate, TimeDelta, Utc};

    use super::{SQLITE_FORMAT, parse_sqlite_text, sqlite_text};

    #[test]
    fn sqlite_text_is_chronos_format() {
        let start = NaiveDate::from_ymd_opt(1, 1, 1)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc();
        let mut at: DateTime<Utc> = start;
        // Steps of a prime number of microseconds walk through every field's range.
        let step = TimeDelta::microseconds(7_919_000_123_457);
        while at.year() <= 9999 {
            assert_eq!(sqlite_text(&at), at.format(SQLITE_FORMAT).to_string());
            at += step;
        }
        let leap = NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_micro_opt(23, 59, 59, 1_500_000)
            .unwrap()
            .and_utc();
        assert_eq!(sqlite_text(&leap), leap.format(SQLITE_FORMAT).to_string());
    }

    #[test]
    fn sqlite_text_reads_back_as_chrono_reads_it() {
        let mut at = NaiveDate::from_ymd_opt(1, 1, 1)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc();
        let step = TimeDelta::microseconds(7_919_000_123_457);
        while at.year() <= 9999 {
            let text = sqlite_text(&at);
            assert_eq!(parse_sqlite_text(&text), Some(at), "{text}");
            let by_chrono = DateTime::parse_from_str(&text, "%Y-%m-%d %H:%M:%S%.f%:z").unwrap();
            assert_eq!(by_chrono.to_utc(), at, "{text}");
            at += step;
        }
        // Other text goes to diesel's reader: not ours to guess.
        for other in [
            "2026-12-04 10:00:00",
            "2026-12-04T10:00:00.000000+00:00",
            "2026-12-04 10:00:00.000000+01:00",
            "2026-13-04 10:00:00.000000+00:00",
            "2026-12-04 10:00:6x.000000+00:00",
            "2459000.5",
        ] {
            assert_eq!(parse_sqlite_text(other), None, "{other}");
        }
    }
}
