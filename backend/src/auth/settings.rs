//! The `[auth]` settings: the first admin, sessions, and who may read `/metrics`.

use std::time::Duration;

use secrecy::SecretString;

use crate::config::ConfigError;
use crate::config::setting::{comma_list, count, derived_flag, hours, optional_text, secret, settings};

settings! {
    /// Staff sign-in, sessions and API tokens.
    pub struct AuthConfig in "auth" {
        /// The first admin's email, created at start-up while there are no users.
        admin_email: Option<String> = optional_text().check("an email address", |email| match email {
            Some(email) => super::check_email(email),
            None => Ok(()),
        }), env "TELLTALE_ADMIN_EMAIL";
        /// The first admin's password (with `admin_email`).
        admin_password: Option<SecretString> = secret(super::MIN_PASSWORD), env "TELLTALE_ADMIN_PASSWORD";
        /// An API token for automation, granted to that admin at start-up.
        api_token: Option<SecretString> = secret(24), env "TELLTALE_API_TOKEN";
        /// How long a sign-in lasts.
        session_hours: Duration = hours(12, 1..=24 * 90), env "TELLTALE_SESSION_HOURS";
        /// Mark the session cookie `Secure` (set it behind a TLS-terminating proxy).
        secure_cookies: Option<bool> = derived_flag("`true` when `alerts.public_url` is https"), env "TELLTALE_SECURE_COOKIES";
        /// When set, `/metrics` needs `Authorization: Bearer <this>`.
        metrics_token: Option<SecretString> = secret(16), env "TELLTALE_METRICS_TOKEN";
        /// Failed sign-ins allowed from one client address for one email (four times as many for
        /// all emails together) before each further try waits, doubling from 1 s up to 15 min.
        /// Only failures count, and a success from the address clears them.
        login_failures_allowed: u32 = count(5, 1..=1000), env "TELLTALE_LOGIN_FAILURES_ALLOWED";
        /// How long a password reset link made in Settings → Staff stays usable (once).
        reset_link_hours: Duration = hours(24, 1..=24 * 7), env "TELLTALE_RESET_LINK_HOURS";
        /// Audit log entries older than this are deleted as new ones are written.
        audit_retention_days: u32 = count(365, 1..=3650), env "TELLTALE_AUDIT_RETENTION_DAYS";
        /// Proxies (IP addresses) whose `X-Forwarded-For` names the client; from any other
        /// peer the header is ignored, so it cannot be forged to dodge the sign-in throttle.
        trusted_proxies: Vec<String> = comma_list("", "comma-separated IP addresses", check_ip), env "TELLTALE_TRUSTED_PROXIES";
    }
}

fn check_ip(text: &str) -> Result<(), String> {
    text.parse::<std::net::IpAddr>()
        .map(|_| ())
        .map_err(|_| format!("{text:?} is not an IP address"))
}

impl AuthConfig {
    /// The client's address: the peer's, or behind a trusted proxy the last address in
    /// `X-Forwarded-For` that is not itself a trusted proxy.
    pub fn client_address(&self, peer: Option<std::net::IpAddr>, forwarded_for: Option<&str>) -> String {
        let trusted = |ip: &std::net::IpAddr| {
            self.trusted_proxies
                .iter()
                .any(|t| t.parse().ok().as_ref() == Some(ip))
        };
        let Some(peer) = peer else {
            return String::new();
        };
        if !trusted(&peer) {
            return peer.to_string();
        }
        forwarded_for
            .unwrap_or_default()
            .split(',')
            .rev()
            .filter_map(|hop| hop.trim().parse::<std::net::IpAddr>().ok())
            .find(|hop| !trusted(hop))
            .unwrap_or(peer)
            .to_string()
    }

    /// The first admin needs both halves; the API token acts as that admin. Cookies are
    /// `Secure` by default when the public URL is https.
    pub fn validate(&mut self, public_url: &str) -> Result<(), ConfigError> {
        if self.admin_email.is_some() != self.admin_password.is_some() {
            return Err(Self::key_error(
                "admin_email",
                "give both the first admin's email and password, or neither",
            ));
        }
        if self.api_token.is_some() && self.admin_email.is_none() {
            return Err(Self::key_error(
                "api_token",
                "needs auth.admin_email (TELLTALE_ADMIN_EMAIL): the token acts as that admin",
            ));
        }
        self.secure_cookies
            .get_or_insert_with(|| public_url.starts_with("https://"));
        Ok(())
    }

    /// Whether the session cookie is marked `Secure`.
    pub fn secure_cookies(&self) -> bool {
        self.secure_cookies.unwrap_or(false)
    }
}
