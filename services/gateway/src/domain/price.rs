//! The built-in simulated price feed's numbers and the tick format every feed publishes.
//! Pure.
//!
//! Simulated prices are a deterministic function of the symbol and the tick number, so every
//! replica running the simulated feed publishes the same tick with the same price and the hub
//! drops the copies (it forwards a symbol's ticks only in increasing time). Each tick says
//! `"source": "simulated"`; these are not market data.

use serde::{Deserialize, Serialize};

/// The `source` of the built-in feed's ticks.
pub const SIMULATED_SOURCE: &str = "simulated";

/// One price tick as published on `prices.<symbol>` by any feed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriceTick {
    /// The symbol (`BTC-USD`).
    pub symbol: String,
    /// The price.
    pub price: f64,
    /// When the price was observed, milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// Who produced it (`simulated` for the built-in feed).
    pub source: String,
}

fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A deterministic pseudo-random number in [0, 1) for `seed` (splitmix64).
fn unit(seed: u64) -> f64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// The simulated price of `symbol` at tick `tick`: a base between 10 and 1010 chosen by the
/// symbol, a slow wave of ±3 % and a jitter of ±0.25 %, rounded to cents.
pub fn simulated_price(symbol: &str, tick: u64) -> f64 {
    let h = fnv1a(symbol);
    let base = 10.0 + unit(h) * 1_000.0;
    let phase = unit(h ^ 1) * std::f64::consts::TAU;
    let wave = 0.03 * ((tick as f64) / 120.0 + phase).sin();
    let jitter = 0.005 * (unit(h ^ tick.wrapping_mul(0x2545_f491_4f6c_dd1d)) - 0.5);
    (base * (1.0 + wave + jitter) * 100.0).round() / 100.0
}

/// The simulated tick of `symbol` for the tick period containing `now_ms`.
pub fn simulated_tick(symbol: &str, now_ms: u64, tick_ms: u64) -> PriceTick {
    let tick_ms = tick_ms.max(1);
    let tick = now_ms / tick_ms;
    PriceTick {
        symbol: symbol.to_owned(),
        price: simulated_price(symbol, tick),
        ts_ms: tick * tick_ms,
        source: SIMULATED_SOURCE.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_compute_the_same_tick() {
        let a = simulated_tick("BTC-USD", 1_700_000_000_123, 1_000);
        let b = simulated_tick("BTC-USD", 1_700_000_000_999, 1_000);
        assert_eq!(a, b);
        assert_eq!(a.ts_ms, 1_700_000_000_000);
        assert_eq!(a.source, "simulated");
    }

    #[test]
    fn prices_stay_positive_bounded_and_move() {
        let mut distinct = std::collections::BTreeSet::new();
        for tick in 0..2_000 {
            let p = simulated_price("ETH-USD", tick);
            assert!(p > 9.0 && p < 1_100.0, "{p}");
            distinct.insert((p * 100.0) as u64);
        }
        assert!(distinct.len() > 100, "the price moves");
        assert_ne!(simulated_price("A", 1), simulated_price("B", 1));
    }

    #[test]
    fn ticks_round_trip_as_json() {
        let t = simulated_tick("SOL-USD", 5_000, 1_000);
        let json = serde_json::to_string(&t).unwrap();
        let back: PriceTick = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);
    }
}
