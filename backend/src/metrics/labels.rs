//! Bounded label values for what senders name: a webhook source is whatever a signed request's
//! URL path says, so only the first `milesight.metric_sources` sources get a series of their
//! own and the rest share `other`; `/metrics` cannot be grown from outside.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::RwLock;

pub const OTHER: &str = "other";

pub struct SourceLabels {
    limit: usize,
    named: RwLock<HashSet<String>>,
}

impl SourceLabels {
    pub fn new(limit: usize) -> SourceLabels {
        SourceLabels {
            limit,
            named: RwLock::default(),
        }
    }

    /// The label for `source`: its name while it is among the first `limit` sources, else `other`.
    pub fn label<'a>(&self, source: &'a str) -> Cow<'a, str> {
        if self.named.read().is_ok_and(|named| named.contains(source)) {
            return Cow::Borrowed(source);
        }
        let Ok(mut named) = self.named.write() else {
            return Cow::Borrowed(OTHER);
        };
        if named.contains(source) || named.len() < self.limit {
            named.insert(source.to_owned());
            Cow::Borrowed(source)
        } else {
            Cow::Borrowed(OTHER)
        }
    }

    /// Takes the database's sources, oldest first: the first `limit` are the named ones, so
    /// every replica and every restart name the same sources.
    pub fn keep<'a>(&self, oldest_first: impl Iterator<Item = &'a str>) {
        let first: HashSet<String> = oldest_first.take(self.limit).map(str::to_owned).collect();
        if let Ok(mut named) = self.named.write() {
            *named = first;
        }
    }

    /// Whether `source` has a series of its own (scrape-time gauges).
    pub fn is_named(&self, source: &str) -> bool {
        self.named.read().is_ok_and(|named| named.contains(source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_beyond_the_limit_share_other() {
        let labels = SourceLabels::new(2);
        assert_eq!(labels.label("site-a"), "site-a");
        assert_eq!(labels.label("site-b"), "site-b");
        assert_eq!(labels.label("<script>x</script>"), OTHER);
        assert_eq!(labels.label("site-a"), "site-a", "a named source stays named");
        labels.keep(["site-b", "site-c", "site-d"].into_iter());
        assert_eq!(labels.label("site-c"), "site-c");
        assert_eq!(labels.label("site-a"), OTHER, "the database's oldest win");
    }
}
