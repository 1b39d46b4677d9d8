#![recursion_limit = "256"]
//! Telltale: receives Milesight webhooks, keeps third-party tokens fresh, and tells on-call
//! when something stops. See `docs/ARCHITECTURE.md` for how the modules fit together.

pub mod alerts;
pub mod app;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod metrics;
pub mod milesight;
pub mod polling;
pub mod present;
pub mod providers;
pub mod redact;
pub mod scheduler;
pub mod storage;
pub mod telemetry;
pub mod tokens;
pub mod web;

/// `docs/ARCHITECTURE.md`'s module map names every module under `backend/src/`, and names
/// none that is gone, so the map a newcomer starts from stays true.
#[cfg(test)]
mod module_map {
    use std::collections::BTreeSet;
    use std::path::Path;

    const SRC: &str = env!("CARGO_MANIFEST_DIR");

    /// The map's rows: (the paths of the first cell, the whole row).
    fn rows() -> Vec<(Vec<String>, String)> {
        let doc = std::fs::read_to_string(Path::new(SRC).join("../docs/ARCHITECTURE.md")).unwrap();
        let map = doc.split("## Module map").nth(1).unwrap();
        let map = map.split("\n## ").next().unwrap();
        map.lines()
            .filter(|l| l.starts_with("| `"))
            .map(|l| {
                let first = l.split('|').nth(1).unwrap_or_default();
                let paths = first.split('`').skip(1).step_by(2).map(str::to_owned).collect();
                (paths, l.to_owned())
            })
            .collect()
    }

    /// Module names in a folder: `name.rs` and `name/` (not `mod.rs`; `settings.rs` has its
    /// own row as `*/settings.rs`).
    fn modules(dir: &Path) -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| {
                let e = e.ok()?;
                let name = e.file_name().into_string().ok()?;
                if e.path().is_dir() {
                    Some(format!("{name}/"))
                } else if name.ends_with(".rs") && name != "mod.rs" && name != "settings.rs" {
                    Some(name)
                } else {
                    None
                }
            })
            .collect()
    }

    #[test]
    fn every_module_is_on_the_map_and_every_mapped_module_exists() {
        let src = Path::new(SRC).join("src");
        let rows = rows();
        let mapped: BTreeSet<String> = rows.iter().flat_map(|(paths, _)| paths.clone()).collect();
        let mut missing = Vec::new();
        for top in modules(&src) {
            if !mapped.iter().any(|p| p == &top || p.starts_with(&top)) {
                missing.push(top.clone());
            }
            if let Some(folder) = top.strip_suffix('/') {
                // Every file in a folder is named in that folder's row.
                let row: String = rows
                    .iter()
                    .filter(|(paths, _)| paths.iter().any(|p| p.starts_with(&top)))
                    .map(|(_, row)| row.as_str())
                    .collect();
                for inner in modules(&src.join(folder)) {
                    if !row.contains(&format!("`{inner}")) && !row.contains(&format!("/{inner}")) {
                        missing.push(format!("{top}{inner}"));
                    }
                }
            }
        }
        assert!(
            missing.is_empty(),
            "not on the module map in docs/ARCHITECTURE.md: {missing:?}"
        );
        let gone: Vec<&String> = mapped
            .iter()
            .filter(|p| !p.contains('*') && !src.join(p.trim_end_matches('/')).exists())
            .collect();
        assert!(
            gone.is_empty(),
            "on the module map but not in backend/src: {gone:?}"
        );
    }
}
