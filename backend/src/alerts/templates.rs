//! Email bodies, rendered from the templates in `backend/templates/email/` (askama: checked
//! at compile time, HTML parts escaped automatically). Each email is stored in the outbox as a
//! text and an HTML fragment; `layout` wraps them when the message is sent, so a digest can
//! put several alerts' fragments into one message.

use askama::Template;

use crate::present::filters;

/// What an alert email says.
pub struct AlertView<'a> {
    /// `firing`, `reminder` or `resolved`.
    pub notice: &'a str,
    pub summary: &'a str,
    pub headline: &'a str,
    pub details: &'a str,
    pub severity: &'a str,
    pub rule: &'a str,
    pub link: &'a str,
}

#[derive(Template)]
#[template(path = "email/alert.txt")]
struct AlertText<'a> {
    a: &'a AlertView<'a>,
}

#[derive(Template)]
#[template(path = "email/alert.html")]
struct AlertHtml<'a> {
    a: &'a AlertView<'a>,
}

/// One email of a digest.
pub struct Part<'a> {
    pub subject: &'a str,
    pub text: &'a str,
    pub html: &'a str,
}

#[derive(Template)]
#[template(path = "email/digest.txt")]
struct DigestText<'a> {
    title: &'a str,
    parts: &'a [Part<'a>],
}

#[derive(Template)]
#[template(path = "email/digest.html")]
struct DigestHtml<'a> {
    title: &'a str,
    parts: &'a [Part<'a>],
}

#[derive(Template)]
#[template(path = "email/test.txt")]
struct TestText<'a> {
    host: &'a str,
}

#[derive(Template)]
#[template(path = "email/test.html")]
struct TestHtml<'a> {
    host: &'a str,
}

#[derive(Template)]
#[template(path = "email/layout.txt")]
struct LayoutText<'a> {
    content: &'a str,
}

#[derive(Template)]
#[template(path = "email/layout.html")]
struct LayoutHtml<'a> {
    content: &'a str,
}

/// Rendering only fails on a template bug; the email still goes out, saying so.
fn render(template: &impl Template) -> String {
    template.render().unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot render an email template");
        format!("(Telltale could not render this email: {e})")
    })
}

/// (text, html) fragments of an alert email.
pub fn alert(view: &AlertView) -> (String, String) {
    (render(&AlertText { a: view }), render(&AlertHtml { a: view }))
}

/// (text, html) fragments of several emails in one.
pub fn digest(title: &str, parts: &[Part]) -> (String, String) {
    (
        render(&DigestText { title, parts }),
        render(&DigestHtml { title, parts }),
    )
}

/// (text, html) fragments of the test email.
pub fn test(host: &str) -> (String, String) {
    (render(&TestText { host }), render(&TestHtml { host }))
}

#[derive(Template)]
#[template(source = "<p>{{ text }}</p>", ext = "html")]
struct NoticeHtml<'a> {
    text: &'a str,
}

/// (text, html) fragments of a plain notice from Telltale itself (a given-up notification).
pub fn notice(text: &str) -> (String, String) {
    (text.to_owned(), render(&NoticeHtml { text }))
}

/// What a password reset email says.
pub struct ResetView<'a> {
    pub admin: &'a str,
    pub email: &'a str,
    pub link: &'a str,
    pub hours: u64,
}

#[derive(Template)]
#[template(path = "email/password_reset.txt")]
struct ResetText<'a> {
    admin: &'a str,
    email: &'a str,
    link: &'a str,
    hours: u64,
}

#[derive(Template)]
#[template(path = "email/password_reset.html")]
struct ResetHtml<'a> {
    admin: &'a str,
    email: &'a str,
    link: &'a str,
    hours: u64,
}

/// (text, html) fragments of a password reset email.
pub fn password_reset(v: &ResetView<'_>) -> (String, String) {
    let (admin, email, link, hours) = (v.admin, v.email, v.link, v.hours);
    (
        render(&ResetText {
            admin,
            email,
            link,
            hours,
        }),
        render(&ResetHtml {
            admin,
            email,
            link,
            hours,
        }),
    )
}

/// The complete bodies sent for stored fragments.
pub fn layout(text: &str, html: &str) -> (String, String) {
    (
        render(&LayoutText { content: text }),
        render(&LayoutHtml { content: html }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(summary: &'a str, details: &'a str) -> AlertView<'a> {
        AlertView {
            notice: "firing",
            summary,
            headline: "Since 2026-01-01",
            details,
            severity: "high",
            rule: "token_needs_reauth",
            link: "https://t.example/api/alerts/1",
        }
    }

    #[test]
    fn the_html_part_escapes_what_providers_said_and_the_text_part_keeps_it() {
        let (text, html) = alert(&view("<b>x</b> & co", "error: <script>"));
        assert!(text.contains("<b>x</b> & co") && text.contains("error: <script>"));
        assert!(
            html.contains("&#60;b&#62;x&#60;/b&#62; &#38; co")
                || html.contains("&lt;b&gt;x&lt;/b&gt; &amp; co"),
            "{html}"
        );
        assert!(!html.contains("<script>"));
        assert!(html.contains("href=\"https://t.example/api/alerts/1\""));
    }

    #[test]
    fn a_digest_lists_every_part_and_the_layout_wraps_it() {
        let (a_text, a_html) = alert(&view("first", "d1"));
        let (b_text, b_html) = alert(&view("second", "d2"));
        let parts = [
            Part {
                subject: "S1",
                text: &a_text,
                html: &a_html,
            },
            Part {
                subject: "S2",
                text: &b_text,
                html: &b_html,
            },
        ];
        let (text, html) = digest("2 alerts", &parts);
        let (text, html) = layout(&text, &html);
        for needle in ["2 alerts", "S1", "S2", "first", "second", "d1", "d2"] {
            assert!(text.contains(needle), "{needle} in {text}");
            assert!(html.contains(needle), "{needle} in {html}");
        }
        assert!(html.starts_with("<!doctype html>") && html.matches("<body").count() == 1);
    }
}
