//! How values are worded for people: times as relative plus local with the zone named,
//! durations, states and provider names. Pages, emails and webhook texts all word values
//! through this module (the templates through [`filters`]), so a time reads the same
//! everywhere and a wording is changed in one place.
//!
//! "Local" is the site's zone: `scheduler.timezone` (`TELLTALE_SCHEDULER_TIMEZONE`), the
//! zone staff already schedule jobs in, set once at start with [`set_zone`].

use std::sync::OnceLock;

use chrono_tz::Tz;

use crate::storage::{UtcTime, now};

static ZONE: OnceLock<Tz> = OnceLock::new();

/// Sets the zone local times are shown in; the first call wins (one zone per process).
pub fn set_zone(zone: Tz) {
    let _ = ZONE.set(zone);
}

/// The zone local times are shown in (UTC until [`set_zone`]).
pub fn zone() -> Tz {
    ZONE.get().copied().unwrap_or(Tz::UTC)
}

/// `2026-12-07 18:32:19 CET`: the instant in `zone`, to the second, with the zone named.
pub fn local(at: UtcTime, zone: Tz) -> String {
    at.0.with_timezone(&zone)
        .format("%Y-%m-%d %H:%M:%S %Z")
        .to_string()
}

/// `3 min ago`, `in 2 h`, `just now`: how far `at` is from `now`, in its largest unit.
pub fn ago(at: UtcTime, now: UtcTime) -> String {
    let seconds = (now.0 - at.0).num_seconds();
    if seconds.abs() < 5 {
        return "just now".to_owned();
    }
    let span = largest_unit(seconds.unsigned_abs());
    if seconds > 0 {
        format!("{span} ago")
    } else {
        format!("in {span}")
    }
}

/// `2026-12-07 18:32:19 CET (3 min ago)`: local time first, so that later times sort later.
pub fn when(at: UtcTime, now: UtcTime, zone: Tz) -> String {
    format!("{} ({})", local(at, zone), ago(at, now))
}

/// A span in its largest unit, rounded down: `45 s`, `12 min`, `3 h`, `2 d`.
fn largest_unit(seconds: u64) -> String {
    match seconds {
        0..60 => format!("{seconds} s"),
        60..3600 => format!("{} min", seconds / 60),
        3600..86_400 => format!("{} h", seconds / 3600),
        _ => format!("{} d", seconds / 86_400),
    }
}

/// A span in its two largest units: `45 s`, `59 min 55 s`, `2 h 5 min`, `3 d 4 h`; a
/// negative span reads as the positive one (callers say "ago" or "overdue by").
pub fn duration(seconds: i64) -> String {
    let s = seconds.unsigned_abs();
    let (d, h, m, sec) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    let pair = |big: u64, big_unit: &str, small: u64, small_unit: &str| {
        if small == 0 {
            format!("{big} {big_unit}")
        } else {
            format!("{big} {big_unit} {small} {small_unit}")
        }
    };
    if d > 0 {
        pair(d, "d", h, "h")
    } else if h > 0 {
        pair(h, "h", m, "min")
    } else if m > 0 {
        pair(m, "min", sec, "s")
    } else {
        format!("{sec} s")
    }
}

/// A state's code as words: `needs_reauth` → `needs re-authorisation`, `expiring_soon` →
/// `expiring soon`. Codes stay in APIs, metrics and CSS classes; people read these.
pub fn state_label(code: &str) -> String {
    match code {
        "needs_reauth" => "needs re-authorisation".to_owned(),
        "invalid_credentials" => "credentials refused".to_owned(),
        "held_back" => "held back".to_owned(),
        // A webhook source's states (their codes are upper case in the API).
        "ACTIVE" => "active".to_owned(),
        "STALE" => "stale".to_owned(),
        "WAITING" => "waiting for the first event".to_owned(),
        other => other.replace('_', " "),
    }
}

/// A UI page as people name it in a link: `/connections/5` → "the connection's page".
pub fn page_name(path: &str) -> String {
    let mut parts = path.trim_start_matches('/').split(['/', '?', '#']);
    let (section, item) = (
        parts.next().unwrap_or_default(),
        parts.next().filter(|p| !p.is_empty()),
    );
    match (section, item) {
        ("connections", Some(_)) => "the connection's page".into(),
        ("devices", Some(_)) => "the device's page".into(),
        ("alerts", Some(_)) => "the alert's page".into(),
        ("", _) => "the overview".into(),
        (section, _) => {
            let mut name = section.to_owned();
            if let Some(first) = name.get_mut(..1) {
                first.make_ascii_uppercase();
            }
            format!("the {name} page")
        }
    }
}

/// An alert rule as people read it: `token_refresh_failing` → "a token cannot be refreshed".
pub fn rule_label(rule: &str) -> String {
    match rule {
        "token_refresh_failing" => "a token cannot be refreshed".into(),
        "token_needs_reauth" => "a connection needs reconnecting".into(),
        "token_runway" => "a token is about to expire".into(),
        "poll_failing" => "polling a platform keeps failing".into(),
        "webhook_source_stale" => "webhooks stopped arriving".into(),
        "milesight_system_notice" => "Milesight sent a system notice".into(),
        "device_offline" => "a device is offline".into(),
        "devices_offline" => "many devices of one source are offline".into(),
        other => other.replace('_', " "),
    }
}

/// The product or protocol a provider code stands for, as its users know it.
pub fn provider_name(code: &str) -> &str {
    match code {
        "oauth2_client_credentials" => "OAuth 2.0 client credentials",
        "oauth2_refresh" => "OAuth 2.0",
        "meta_long_lived" => "Meta",
        "thingsboard" => "ThingsBoard",
        "password_login" => "password login",
        "milesight" => "Milesight",
        other => other,
    }
}

/// The product a connection is to its users: its preset's platform (Spotify, GitHub, the
/// Milesight OpenAPI), else its provider's product ("other OAuth 2.0" for a plain refresh-token
/// grant).
pub fn product(provider: &str, preset: Option<&str>) -> String {
    match (preset, provider) {
        (Some("spotify"), _) => "Spotify".into(),
        (Some("google"), _) => "Google".into(),
        (Some("github"), _) => "GitHub".into(),
        (Some("discord"), _) => "Discord".into(),
        (Some("milesight"), _) => "Milesight OpenAPI".into(),
        (_, "oauth2_refresh") => "other OAuth 2.0".into(),
        (_, "meta_page") => "Facebook page".into(),
        (_, code) => provider_name(code).to_owned(),
    }
}

/// A connection as people name it: `Spotify connection 'acme marketing'`.
pub fn connection_name(c: &crate::storage::connections::Connection) -> String {
    format!(
        "{} connection '{}'",
        product(&c.provider, c.settings.text("preset")),
        c.name
    )
}

/// An optional instant, so the filters take `UtcTime` and `Option<UtcTime>` alike.
pub trait Moment {
    fn instant(&self) -> Option<UtcTime>;
}

impl Moment for UtcTime {
    fn instant(&self) -> Option<UtcTime> {
        Some(*self)
    }
}

impl Moment for Option<UtcTime> {
    fn instant(&self) -> Option<UtcTime> {
        *self
    }
}

impl<T: Moment + ?Sized> Moment for &T {
    fn instant(&self) -> Option<UtcTime> {
        (**self).instant()
    }
}

/// A span in whole seconds, however the view model holds it.
pub trait Seconds {
    fn seconds(&self) -> i64;
}

impl Seconds for i64 {
    fn seconds(&self) -> i64 {
        *self
    }
}

impl<T: Seconds + ?Sized> Seconds for &T {
    fn seconds(&self) -> i64 {
        (**self).seconds()
    }
}

/// What an absent time or value shows.
const NONE: &str = "–";

/// The template filters (askama finds them as `filters::NAME` beside each template struct).
pub mod filters {
    use askama::filters::Safe;
    use askama::{Result, Values};

    use super::{Moment, NONE, Seconds, UtcTime, now, zone};

    /// `{{ t|ago }}`: `3 min ago`, `in 2 h`; `–` when absent.
    #[askama::filter_fn]
    pub fn ago(at: impl Moment, _: &dyn Values) -> Result<String> {
        Ok(at
            .instant()
            .map_or_else(|| NONE.to_owned(), |t| super::ago(t, now())))
    }

    /// `{{ t|local }}`: `2026-12-07 18:32:19 CET`; `–` when absent.
    #[askama::filter_fn]
    pub fn local(at: impl Moment, _: &dyn Values) -> Result<String> {
        Ok(at
            .instant()
            .map_or_else(|| NONE.to_owned(), |t| super::local(t, zone())))
    }

    /// `{{ t|when }}`: `2026-12-07 18:32:19 CET (3 min ago)`; `–` when absent.
    #[askama::filter_fn]
    pub fn when(at: impl Moment, _: &dyn Values) -> Result<String> {
        Ok(at
            .instant()
            .map_or_else(|| NONE.to_owned(), |t| super::when(t, now(), zone())))
    }

    /// `{{ t|time }}`: a `<time>` element showing the relative time, with the local time as
    /// its tooltip and the instant for `telltale.js` to keep the wording current; `–` when
    /// absent.
    #[askama::filter_fn]
    pub fn time(at: impl Moment, _: &dyn Values) -> Result<Safe<String>> {
        // Only our own formatting goes in, never a sender's text, so nothing needs escaping.
        Ok(Safe(at.instant().map_or_else(
            || NONE.to_owned(),
            |t: UtcTime| {
                format!(
                    "<time datetime=\"{t}\" title=\"{}\" data-ago>{}</time>",
                    super::local(t, zone()),
                    super::ago(t, now())
                )
            },
        )))
    }

    /// `{{ secs|duration }}`: `59 min 55 s`.
    #[askama::filter_fn]
    pub fn duration(seconds: impl Seconds, _: &dyn Values) -> Result<String> {
        Ok(super::duration(seconds.seconds()))
    }

    /// `{{ value|or_dash }}`: an optional value, or `–` when absent.
    #[askama::filter_fn]
    pub fn or_dash<T: std::fmt::Display>(value: &Option<T>, _: &dyn Values) -> Result<String> {
        Ok(value
            .as_ref()
            .map_or_else(|| NONE.to_owned(), ToString::to_string))
    }

    /// `{{ path|page_name }}`: `the connection's page`.
    #[askama::filter_fn]
    pub fn page_name(path: impl std::fmt::Display, _: &dyn Values) -> Result<String> {
        Ok(super::page_name(&path.to_string()))
    }

    /// `{{ status|state_label }}`: `needs re-authorisation`.
    #[askama::filter_fn]
    pub fn state_label(code: impl std::fmt::Display, _: &dyn Values) -> Result<String> {
        Ok(super::state_label(&code.to_string()))
    }

    /// `{{ rule|rule_label }}`: `a device is offline`.
    #[askama::filter_fn]
    pub fn rule_label(rule: impl std::fmt::Display, _: &dyn Values) -> Result<String> {
        Ok(super::rule_label(&rule.to_string()))
    }

    /// `{{ provider|provider_name }}`: `ThingsBoard`.
    #[askama::filter_fn]
    pub fn provider_name(code: impl std::fmt::Display, _: &dyn Values) -> Result<String> {
        Ok(super::provider_name(&code.to_string()).to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn at(h: u32, m: u32, s: u32) -> UtcTime {
        UtcTime::new(
            Utc.with_ymd_and_hms(2026, 12, 7, h, m, s)
                .single()
                .unwrap_or_default(),
        )
    }

    #[test]
    fn local_times_name_their_zone_and_follow_daylight_saving() {
        assert_eq!(local(at(17, 32, 19), Tz::UTC), "2026-12-07 17:32:19 UTC");
        assert_eq!(
            local(at(17, 32, 19), Tz::Europe__Berlin),
            "2026-12-07 18:32:19 CET"
        );
        let summer = UtcTime::new(
            Utc.with_ymd_and_hms(2026, 7, 1, 12, 0, 0)
                .single()
                .unwrap_or_default(),
        );
        assert_eq!(local(summer, Tz::Europe__Berlin), "2026-07-01 14:00:00 CEST");
    }

    #[test]
    fn relative_times_say_ago_or_in_with_the_largest_unit() {
        let now = at(12, 0, 0);
        assert_eq!(ago(at(12, 0, 0), now), "just now");
        assert_eq!(ago(at(11, 59, 15), now), "45 s ago");
        assert_eq!(ago(at(11, 57, 0), now), "3 min ago");
        assert_eq!(ago(at(9, 0, 0), now), "3 h ago");
        assert_eq!(ago(at(12, 59, 59), now), "in 59 min");
        let two_days = UtcTime::new(now.0 - chrono::Duration::days(2));
        assert_eq!(ago(two_days, now), "2 d ago");
        assert_eq!(
            when(at(11, 57, 0), now, Tz::Europe__Berlin),
            "2026-12-07 12:57:00 CET (3 min ago)"
        );
    }

    #[test]
    fn connections_are_named_by_the_product_people_know() {
        assert_eq!(product("oauth2_refresh", Some("spotify")), "Spotify");
        assert_eq!(product("oauth2_refresh", Some("github")), "GitHub");
        assert_eq!(product("oauth2_refresh", None), "other OAuth 2.0");
        assert_eq!(
            product("oauth2_client_credentials", Some("milesight")),
            "Milesight OpenAPI"
        );
        assert_eq!(product("thingsboard", None), "ThingsBoard");
        assert_eq!(product("meta_long_lived", None), "Meta");
    }

    #[test]
    fn durations_show_their_two_largest_units() {
        assert_eq!(duration(0), "0 s");
        assert_eq!(duration(45), "45 s");
        assert_eq!(duration(3595), "59 min 55 s");
        assert_eq!(duration(3600), "1 h");
        assert_eq!(duration(7500), "2 h 5 min");
        assert_eq!(duration(-90), "1 min 30 s");
        assert_eq!(duration(3 * 86_400 + 4 * 3600 + 59), "3 d 4 h");
    }

    #[test]
    fn states_and_providers_read_as_words() {
        assert_eq!(state_label("needs_reauth"), "needs re-authorisation");
        assert_eq!(state_label("expiring_soon"), "expiring soon");
        assert_eq!(state_label("online"), "online");
        assert_eq!(provider_name("thingsboard"), "ThingsBoard");
        assert_eq!(
            provider_name("oauth2_client_credentials"),
            "OAuth 2.0 client credentials"
        );
        assert_eq!(provider_name("something_new"), "something_new");
    }

    #[derive(askama::Template)]
    #[template(
        source = "{{ t|time }} {{ none|time }} {{ t|local }} {{ secs|duration }} {{ code|state_label }}",
        ext = "html"
    )]
    struct Sample {
        t: UtcTime,
        none: Option<UtcTime>,
        secs: i64,
        code: &'static str,
    }

    #[test]
    fn the_filters_word_values_in_templates() {
        use askama::Template;
        let html = Sample {
            t: at(17, 32, 19),
            none: None,
            secs: 3595,
            code: "needs_reauth",
        }
        .render()
        .unwrap_or_default();
        assert!(
            html.starts_with(
                "<time datetime=\"2026-12-07T17:32:19.000000Z\" title=\"2026-12-07 17:32:19 UTC\" data-ago>"
            ),
            "{html}"
        );
        assert!(
            html.ends_with(" – 2026-12-07 17:32:19 UTC 59 min 55 s needs re-authorisation"),
            "{html}"
        );
    }
}
