//! `SmtpSink`: a real SMTP server (aiosmtpd) on 127.0.0.1 that keeps what it receives.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::assert_no_canary;

/// A real SMTP server on 127.0.0.1: Python's aiosmtpd (installed by `scripts/test`) storing
/// every message it accepts in a maildir. Killed on drop.
pub struct SmtpSink {
    child: Child,
    pub port: u16,
    dir: PathBuf,
    _root: tempfile::TempDir,
}

/// aiosmtpd with an authenticator: `python3 -c WITH_LOGIN port maildir user password`.
const WITH_LOGIN: &str = r#"
import sys, time
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import AuthResult, LoginPassword
port, maildir, user, password = sys.argv[1], sys.argv[2], sys.argv[3].encode(), sys.argv[4].encode()
def check(server, session, envelope, mechanism, data):
    ok = isinstance(data, LoginPassword) and data.login == user and data.password == password
    return AuthResult(success=ok, handled=False)
controller = Controller(Mailbox(maildir), hostname="127.0.0.1", port=int(port),
                        authenticator=check, auth_required=True, auth_require_tls=False)
controller.start()
while True:
    time.sleep(3600)
"#;

/// A port nothing listens on now (for an SMTP server that is down, or started later).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

impl SmtpSink {
    pub async fn start() -> SmtpSink {
        SmtpSink::start_on(free_port()).await
    }

    pub async fn start_on(port: u16) -> SmtpSink {
        SmtpSink::spawn(port, None).await
    }

    /// A server that asks for a sign-in (AUTH PLAIN or LOGIN, offered without TLS) and accepts
    /// only `user` with `password`; anything else is answered "535 5.7.8 Authentication
    /// credentials invalid", as a real provider does.
    pub async fn start_with_login(user: &str, password: &str) -> SmtpSink {
        SmtpSink::spawn(free_port(), Some((user, password))).await
    }

    async fn spawn(port: u16, login: Option<(&str, &str)>) -> SmtpSink {
        let root = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        // aiosmtpd's Mailbox creates the maildir itself; it must not exist beforehand.
        let dir = root.path().join("maildir");
        let mut command = Command::new("python3");
        match login {
            None => {
                command
                    .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
                    .args(["-c", "aiosmtpd.handlers.Mailbox"])
                    .arg(&dir);
            }
            Some((user, password)) => {
                command
                    .args(["-c", WITH_LOGIN])
                    .arg(port.to_string())
                    .arg(&dir)
                    .args([user, password]);
            }
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start aiosmtpd (python3 -m pip install aiosmtpd): {e}"));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "aiosmtpd did not start on port {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        SmtpSink {
            child,
            port,
            dir,
            _root: root,
        }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Every message received so far, as RFC 5322 text with folded header lines unfolded
    /// (long subjects arrive split over lines).
    pub fn messages(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.dir.join("new")) else {
            return Vec::new();
        };
        let mut messages: Vec<(std::time::SystemTime, String)> = entries
            .flatten()
            .filter_map(|e| {
                let modified = e.metadata().ok()?.modified().ok()?;
                Some((modified, std::fs::read_to_string(e.path()).ok()?))
            })
            .collect();
        messages.sort_by_key(|(t, _)| *t);
        let messages: Vec<String> = messages
            .into_iter()
            .map(|(_, m)| m.replace("\r\n", "\n").replace("\n ", " ").replace("\n\t", " "))
            .collect();
        for message in &messages {
            assert_no_canary("an email", message);
        }
        messages
    }

    /// The HTML part of each message received so far, decoded as a mail client shows it.
    pub fn html_parts(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.dir.join("new")) else {
            return Vec::new();
        };
        let mut raw: Vec<(std::time::SystemTime, String)> = entries
            .flatten()
            .filter_map(|e| {
                Some((
                    e.metadata().ok()?.modified().ok()?,
                    std::fs::read_to_string(e.path()).ok()?,
                ))
            })
            .collect();
        raw.sort_by_key(|(t, _)| *t);
        raw.into_iter()
            .filter_map(|(_, m)| {
                let m = m.replace("\r\n", "\n");
                let part = &m[m.find("Content-Type: text/html")?..];
                let body = &part[part.find("\n\n")? + 2..];
                let body = &body[..body.find("\n--").unwrap_or(body.len())];
                let html = quoted_printable::decode(body, quoted_printable::ParseMode::Robust).ok()?;
                String::from_utf8(html).ok()
            })
            .collect()
    }

    /// Waits until `n` messages have arrived, and returns them.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<String> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let messages = self.messages();
            if messages.len() >= n || std::time::Instant::now() >= deadline {
                return messages;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
