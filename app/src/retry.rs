//! Transient failures (the network hiccups, a server restarts) are retried with backoff in the
//! browser before anyone is told; lasting ones come back as they are.

use std::future::Future;

use crate::error::{AppError, ErrorKind};

/// Attempts in all, and the first pause (doubled each time).
const ATTEMPTS: u32 = 3;
const FIRST_PAUSE_MS: u32 = 300;

pub fn is_transient(error: &AppError) -> bool {
    matches!(error.kind, ErrorKind::Unavailable | ErrorKind::Internal)
}

/// Calls `call`; in the browser, retries transient errors up to [`ATTEMPTS`] times in all.
/// On the server (rendering a page) it calls once: the page must not hang.
pub async fn with_retry<T, Fut>(mut call: impl FnMut() -> Fut) -> Result<T, AppError>
where
    Fut: Future<Output = Result<T, AppError>>,
{
    let mut pause = FIRST_PAUSE_MS;
    let mut attempt = 1;
    loop {
        match call().await {
            Err(e) if cfg!(feature = "hydrate") && attempt < ATTEMPTS && is_transient(&e) => {
                sleep_ms(pause).await;
                pause *= 2;
                attempt += 1;
            }
            other => return other,
        }
    }
}

pub(crate) async fn sleep_ms(ms: u32) {
    #[cfg(feature = "hydrate")]
    // Timers live on the page's one thread; the wrapper lets resources hold the future.
    send_wrapper::SendWrapper::new(gloo_timers::future::TimeoutFuture::new(ms)).await;
    #[cfg(not(feature = "hydrate"))]
    let _ = ms;
}
