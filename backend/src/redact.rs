//! Keeps secrets out of text that may be logged, stored or shown: upstream error messages
//! sometimes echo what they were sent.

/// Replaces every occurrence of each secret with `****` and caps the length.
pub fn redact(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_owned();
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(*secret, "****");
    }
    if out.chars().count() > 300 {
        out = out.chars().take(300).collect::<String>() + "…";
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_are_replaced_and_text_capped() {
        assert_eq!(
            super::redact("bad secret s3cr3t given", &["s3cr3t"]),
            "bad secret **** given"
        );
        assert_eq!(
            super::redact("short ab", &["ab"]),
            "short ab",
            "too short to be a secret worth matching"
        );
        assert!(super::redact(&"x".repeat(1000), &[]).chars().count() <= 301);
    }
}
