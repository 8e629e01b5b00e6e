//! The built-in simulated price feed: publishes a tick per symbol every `prices.tick_ms` on
//! `<prices.subject_prefix>.<symbol>`, the same subjects any real feed publishes to. Its ticks
//! say `"source": "simulated"`; they are demo data, not market data.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use liquid_bus::{EventBus, Headers};
use liquid_kit::telemetry::target;
use tokio_util::sync::CancellationToken;

use crate::config::PriceSettings;
use crate::domain::price::simulated_tick;

/// Runs the simulated feed until `shutdown`.
pub async fn simulate(
    bus: Arc<dyn EventBus>,
    settings: PriceSettings,
    shutdown: CancellationToken,
) {
    tracing::info!(target: target::WEBSOCKET, symbols = ?settings.symbols, tick_ms = settings.tick_ms, "simulated price feed running (demo data, labelled source=simulated)");
    let mut tick = tokio::time::interval(Duration::from_millis(settings.tick_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut failing = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        for symbol in &settings.symbols {
            let tick = simulated_tick(symbol, now_ms, settings.tick_ms);
            let Ok(payload) = serde_json::to_vec(&tick) else {
                continue;
            };
            let subject = format!("{}.{symbol}", settings.subject_prefix);
            match bus
                .publish(&subject, Headers::new(), Bytes::from(payload))
                .await
            {
                Ok(()) => failing = false,
                Err(error) => {
                    if !failing {
                        tracing::warn!(target: target::WEBSOCKET, %subject, %error, "simulated price tick not published");
                    }
                    failing = true;
                }
            }
        }
    }
}
