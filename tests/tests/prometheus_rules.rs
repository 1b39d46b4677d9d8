//! The Prometheus side of alerting, checked with the real tools from Debian's `prometheus` and
//! `prometheus-alertmanager` packages (scripts/test installs them): the rules load, their unit
//! tests pass, every rule has a firing and a not-firing test, and the Alertmanager example
//! routes to email with resolved notifications.

use std::path::PathBuf;
use std::process::Command;

fn alerts_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../alerts"))
}

/// Runs a tool and returns its output; a missing tool fails the test (never skipped).
fn run(tool: &str, args: &[&str]) -> String {
    let output = Command::new(tool)
        .args(args)
        .current_dir(alerts_dir())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {tool} ({e}); install Debian's prometheus and prometheus-alertmanager packages (scripts/test does)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{tool} {args:?} failed:\n{text}");
    text
}

fn rule_names() -> Vec<String> {
    let rules = std::fs::read_to_string(alerts_dir().join("telltale.rules.yml")).unwrap();
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(|name| name.trim().to_owned())
        .collect()
}

#[test]
fn the_alert_rules_load_and_their_unit_tests_pass() {
    let checked = run("promtool", &["check", "rules", "telltale.rules.yml"]);
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", rule_names().len())),
        "{checked}"
    );
    let tested = run("promtool", &["test", "rules", "telltale.rules_test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn every_rule_is_tested_firing_and_not_firing() {
    let tests = std::fs::read_to_string(alerts_dir().join("telltale.rules_test.yml")).unwrap();
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    let names = rule_names();
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        let mut firing = false;
        let mut quiet = false;
        for (i, line) in lines.iter().enumerate() {
            if line.strip_prefix("alertname: ") == Some(name.as_str()) {
                match lines.get(i + 1) {
                    Some(&"exp_alerts: []") => quiet = true,
                    Some(&"exp_alerts:") => firing = true,
                    other => panic!("{name}: unexpected line after alertname: {other:?}"),
                }
            }
        }
        assert!(firing, "{name} has no test where it fires");
        assert!(quiet, "{name} has no test where it stays quiet");
    }
}

#[test]
fn every_rule_has_a_summary_description_and_runbook() {
    let rules = std::fs::read_to_string(alerts_dir().join("telltale.rules.yml")).unwrap();
    for block in rules.split("- alert: ").skip(1) {
        let name = block.lines().next().unwrap_or_default();
        for annotation in ["summary:", "description:", "runbook:", "severity:"] {
            assert!(block.contains(annotation), "{name} has no {annotation}");
        }
    }
}

#[test]
fn the_alertmanager_example_emails_on_call_and_sends_resolved() {
    let checked = run("amtool", &["check-config", "alertmanager.yml"]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let config = std::fs::read_to_string(alerts_dir().join("alertmanager.yml")).unwrap();
    assert!(config.contains("email_configs:"));
    assert!(config.contains("send_resolved: true"));
}
