//! CPU time per request, split by where it is spent, from Linux's per-thread and per-process
//! accounting (`/proc/*/stat`, in clock ticks): Telltale's HTTP workers (actix's
//! `actix-server worker` threads: routing, signature check, parsing, reply), the rest of
//! Telltale (its tokio runtime: group-commit writers, the database client, jobs; and threads
//! that came and went, such as SQLite's blocking writer), every PostgreSQL process, and this
//! program (the load generator).

/// Clock ticks a second (`getconf CLK_TCK`; 100 on every Linux this runs on).
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU ticks used so far, by place.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTicks {
    pub http: u64,
    pub telltale_rest: u64,
    pub postgres: u64,
    pub load: u64,
}

/// utime + stime of a `stat` file's contents (fields 14 and 15), and its command name.
fn parse_stat(stat: &str) -> Option<(&str, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = &stat[open + 1..close];
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

fn ticks_of(path: &str) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(path).ok()?;
    parse_stat(&stat).map(|(name, ticks)| (name.to_owned(), ticks))
}

/// Reads the counters now. `server` is Telltale's pid.
pub fn sample(server: u32) -> CpuTicks {
    let mut ticks = CpuTicks::default();
    // The process total includes threads that have exited; the HTTP workers live throughout.
    let total = ticks_of(&format!("/proc/{server}/stat")).map_or(0, |(_, t)| t);
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{server}/task")) {
        for task in tasks.flatten() {
            if let Some((name, t)) = ticks_of(&format!("{}/stat", task.path().display()))
                && name.starts_with("actix-server wo")
            {
                ticks.http += t;
            }
        }
    }
    ticks.telltale_rest = total.saturating_sub(ticks.http);
    if let Ok(processes) = std::fs::read_dir("/proc") {
        for process in processes.flatten() {
            let path = process.path();
            if !path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            {
                continue;
            }
            if let Some((name, t)) = ticks_of(&format!("{}/stat", path.display()))
                && name == "postgres"
            {
                ticks.postgres += t;
            }
        }
    }
    ticks.load = ticks_of("/proc/self/stat").map_or(0, |(_, t)| t);
    ticks
}

/// Microseconds of CPU per request between two samples, by place.
pub struct PerRequest {
    pub http: f64,
    pub telltale_rest: f64,
    pub postgres: f64,
    pub load: f64,
}

impl PerRequest {
    pub fn between(before: CpuTicks, after: CpuTicks, requests: u64) -> PerRequest {
        let per =
            |a: u64, b: u64| (b.saturating_sub(a)) as f64 / TICKS_PER_SECOND * 1e6 / requests.max(1) as f64;
        PerRequest {
            http: per(before.http, after.http),
            telltale_rest: per(before.telltale_rest, after.telltale_rest),
            postgres: per(before.postgres, after.postgres),
            load: per(before.load, after.load),
        }
    }

    pub fn total(&self) -> f64 {
        self.http + self.telltale_rest + self.postgres + self.load
    }

    /// `http + rest + PostgreSQL + load = total` (PostgreSQL left out on SQLite).
    pub fn show(&self, postgres: bool) -> String {
        if postgres {
            format!(
                "{:.0} + {:.0} + {:.0} + {:.0} = {:.0}",
                self.http,
                self.telltale_rest,
                self.postgres,
                self.load,
                self.total()
            )
        } else {
            format!(
                "{:.0} + {:.0} + {:.0} = {:.0}",
                self.http,
                self.telltale_rest,
                self.load,
                self.total() - self.postgres
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_stat;

    #[test]
    fn reads_user_and_system_time_past_a_name_with_spaces() {
        let stat = "4242 (actix-server wo) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 1 0";
        assert_eq!(parse_stat(stat), Some(("actix-server wo", 281)));
    }
}
