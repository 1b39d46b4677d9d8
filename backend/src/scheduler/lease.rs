//! Leases that a live holder renews while it works: a unit of work (a connection's refresh, a
//! poll) is claimed for a short lease, renewed every third of it until the work ends, so a
//! process killed mid-work holds its claims for at most one short lease, and a slow request
//! never loses its claim to another replica.

use std::future::Future;
use std::time::Duration;

use crate::storage::{StorageResult, UtcTime, now};

/// When a lease claimed now for `lease` runs out.
pub fn until(lease: Duration) -> UtcTime {
    UtcTime::new(now().0 + chrono::Duration::from_std(lease).unwrap_or_default())
}

/// Runs `work`, calling `renew(new expiry)` every third of `lease` while it runs. `renew`
/// answers whether the lease was still ours; once lost (or a renewal fails) the work finishes
/// unrenewed, as its own claim checks guard what it writes.
pub async fn renewed_while<T, R, F>(lease: Duration, work: impl Future<Output = T>, mut renew: R) -> T
where
    R: FnMut(UtcTime) -> F,
    F: Future<Output = StorageResult<bool>>,
{
    let every = (lease / 3).max(Duration::from_millis(100));
    let keep = async {
        loop {
            tokio::time::sleep(every).await;
            match renew(until(lease)).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!("a lease ran out before its work ended; another process may take it");
                    return;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot renew a lease; it runs out by itself");
                    return;
                }
            }
        }
    };
    tokio::pin!(work);
    tokio::select! {
        done = &mut work => return done,
        () = keep => {}
    }
    work.await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_lease_is_renewed_every_third_while_the_work_runs_and_not_after() {
        let renewals = Arc::new(AtomicUsize::new(0));
        let counted = renewals.clone();
        let work = tokio::time::sleep(Duration::from_secs(95));
        renewed_while(Duration::from_secs(30), work, move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Ok(true) }
        })
        .await;
        assert_eq!(renewals.load(Ordering::SeqCst), 9, "at 10 s, 20 s … 90 s");
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(renewals.load(Ordering::SeqCst), 9, "none after the work ended");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_lease_stops_the_renewals_but_not_the_work() {
        let renewals = Arc::new(AtomicUsize::new(0));
        let counted = renewals.clone();
        let done = renewed_while(
            Duration::from_secs(3),
            async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                "finished"
            },
            move |_| {
                counted.fetch_add(1, Ordering::SeqCst);
                async { Ok(false) }
            },
        )
        .await;
        assert_eq!((done, renewals.load(Ordering::SeqCst)), ("finished", 1));
    }
}
