//! Process signals → a cancellation token that every server and background task watches.

use tokio_util::sync::CancellationToken;

/// Returns a token cancelled on SIGINT (Ctrl-C) or SIGTERM.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        t.cancel();
    });
    token
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for sigterm; only ctrl-c stops the process");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Spawns a named background task with its own span that stops when `token` is cancelled.
pub fn spawn_named<F>(
    name: &'static str,
    token: CancellationToken,
    fut: F,
) -> tokio::task::JoinHandle<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    use tracing::Instrument;
    let span = tracing::info_span!("task", task = name);
    tokio::spawn(
        async move {
            tokio::select! {
                _ = token.cancelled() => tracing::debug!("task cancelled"),
                _ = fut => {}
            }
        }
        .instrument(span),
    )
}
