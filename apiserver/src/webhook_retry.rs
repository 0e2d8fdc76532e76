//! Retries of review calls (`SubjectAccessReview`, `TokenReview`) as kube's webhook
//! clients retry them (`DefaultAuthWebhookRetryBackoff` and `DefaultShouldRetry`): up to 5
//! attempts, 500 ms apart growing 1.5 times (with up to 20 % jitter), and only for transient
//! failures (429, 500, 504, a lost or reset connection) — a refused connection or a 403 fails
//! at once. Each attempt has [`TIMEOUT`] to answer (kube's webhook request timeout); one
//! that does not fails the call.

use std::future::Future;
use std::time::Duration;

/// How long one attempt may take.
pub const TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts in all.
pub const STEPS: u32 = 5;
const FIRST: Duration = Duration::from_millis(500);
const FACTOR: f64 = 1.5;
const JITTER: f64 = 0.2;

/// Whether `e` is worth another attempt.
pub fn transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => matches!(s.code, 429 | 500 | 504),
        kube::Error::HyperError(h) => {
            h.is_incomplete_message() || h.is_closed() || h.is_canceled() || {
                let m = h.to_string();
                m.contains("reset") || m.contains("connection closed")
            }
        }
        kube::Error::Service(s) => {
            let m = s.to_string();
            m.contains("reset") || m.contains("connection closed")
        }
        _ => false,
    }
}

/// Runs `call` until it succeeds, fails for good, times out or [`STEPS`] attempts were made;
/// the error as text.
pub async fn with_retries<T, F, Fut>(what: &'static str, mut call: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let mut delay = FIRST;
    let mut attempt = 1;
    loop {
        match tokio::time::timeout(TIMEOUT, call()).await {
            Err(_) => return Err(format!("no answer within {TIMEOUT:?}")),
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if attempt < STEPS && transient(&e) => {
                let jitter = 1.0 + rand::random::<f64>() * JITTER;
                tracing::debug!(call = what, attempt, error = %e, "retrying");
                tokio::time::sleep(delay.mul_f64(jitter)).await;
                delay = delay.mul_f64(FACTOR);
                attempt += 1;
            }
            Ok(Err(e)) => return Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            ..Default::default()
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_up_to_five_attempts() {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = with_retries("test", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(api(500))
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), STEPS);
        // A success after two failures.
        let calls = AtomicU32::new(0);
        let r = with_retries("test", || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(api(429))
            } else {
                Ok(7)
            }
        })
        .await;
        assert_eq!(r.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn lasting_failures_fail_at_once() {
        for code in [400, 401, 403, 404] {
            let calls = AtomicU32::new(0);
            let r: Result<(), _> = with_retries("test", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(api(code))
            })
            .await;
            assert!(r.is_err());
            assert_eq!(calls.load(Ordering::SeqCst), 1, "{code}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_without_an_answer_fails_the_call() {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = with_retries("test", || {
            calls.fetch_add(1, Ordering::SeqCst);
            std::future::pending()
        })
        .await;
        assert_eq!(r.unwrap_err(), "no answer within 30s");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
