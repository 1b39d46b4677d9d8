//! A closed-loop HTTP/1.1 load generator for the benchmarks: C keep-alive connections, each
//! sending its next request as soon as the previous answer is read, until a deadline. Unlike
//! wrk or oha it builds every request itself (a fresh signature and nonce, unique event ids)
//! and hands every answer to the workload, so a run can check exactly what was acknowledged.
//! A connection stops after the answer in flight at the deadline: nothing is left unanswered.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// One request to send.
pub struct Request {
    pub path: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

/// What a workload sends and how it counts the answers.
pub trait Workload: Send + Sync + 'static {
    /// Per-connection counts, merged at the end.
    type Tally: Default + Send + 'static;
    /// The request with sequence number `seq` (unique across connections, from 0).
    fn request(&self, seq: u64) -> Request;
    /// Records the answer to request `seq`.
    fn answer(&self, seq: u64, status: u16, body: &[u8], tally: &mut Self::Tally);
}

pub struct LoadReport<T> {
    /// Requests answered (any status).
    pub answered: u64,
    /// Requests that got no answer (connection error); a run with any is not exact.
    pub unanswered: u64,
    pub elapsed: Duration,
    /// Latency of answered requests, in microseconds.
    pub latency: Histogram<u64>,
    pub tallies: Vec<T>,
}

impl<T> LoadReport<T> {
    pub fn requests_per_second(&self) -> f64 {
        self.answered as f64 / self.elapsed.as_secs_f64()
    }

    /// The latency at `quantile` (0..1), in milliseconds.
    pub fn latency_ms(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }

    pub fn max_latency_ms(&self) -> f64 {
        self.latency.max() as f64 / 1000.0
    }
}

/// Runs `workload` against `addr` over `connections` connections for `duration`.
pub async fn run<W: Workload>(
    addr: SocketAddr,
    connections: usize,
    duration: Duration,
    workload: Arc<W>,
) -> Result<LoadReport<W::Tally>, String> {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        tasks.spawn(drive(addr, workload.clone(), next.clone(), deadline));
    }
    let mut report = LoadReport {
        answered: 0,
        unanswered: 0,
        elapsed: Duration::ZERO,
        latency: new_histogram()?,
        tallies: Vec::with_capacity(connections),
    };
    while let Some(joined) = tasks.join_next().await {
        let one = joined.map_err(|e| format!("a load connection panicked: {e}"))??;
        report.answered += one.answered;
        report.unanswered += one.unanswered;
        report
            .latency
            .add(&one.latency)
            .map_err(|e| format!("latency histogram: {e}"))?;
        report.tallies.push(one.tally);
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

fn new_histogram() -> Result<Histogram<u64>, String> {
    // 1 µs to 60 s, three significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|e| format!("latency histogram: {e}"))
}

struct Connection<T> {
    answered: u64,
    unanswered: u64,
    latency: Histogram<u64>,
    tally: T,
}

async fn drive<W: Workload>(
    addr: SocketAddr,
    workload: Arc<W>,
    next: Arc<AtomicU64>,
    deadline: Instant,
) -> Result<Connection<W::Tally>, String> {
    let mut stats = Connection {
        answered: 0,
        unanswered: 0,
        latency: new_histogram()?,
        tally: W::Tally::default(),
    };
    let host = addr.to_string();
    let mut sender = None;
    while Instant::now() < deadline {
        let mut ready = match sender.take() {
            Some(ready) => ready,
            None => connect(addr).await?,
        };
        let seq = next.fetch_add(1, Ordering::Relaxed);
        let request = workload.request(seq);
        let mut builder = hyper::Request::post(&request.path).header("host", &host);
        for (name, value) in &request.headers {
            builder = builder.header(*name, value);
        }
        let http_request = builder
            .body(Full::new(request.body))
            .map_err(|e| format!("building a request: {e}"))?;
        let sent = Instant::now();
        let answer = async {
            let response = ready.send_request(http_request).await?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        }
        .await;
        match answer {
            Ok((status, body)) => {
                let micros = sent.elapsed().as_micros().clamp(1, 60_000_000) as u64;
                stats.latency.saturating_record(micros);
                stats.answered += 1;
                workload.answer(seq, status, &body, &mut stats.tally);
                sender = Some(ready);
            }
            // The connection is gone; the next request opens a new one.
            Err(_) => stats.unanswered += 1,
        }
    }
    Ok(stats)
}

async fn connect(addr: SocketAddr) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake with {addr}: {e}"))?;
    tokio::spawn(connection);
    Ok(sender)
}
