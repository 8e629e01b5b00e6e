//! Cost of a request from a configurable price table (US dollars per million tokens).
//!
//! Keys are exact model names, or a prefix ending in `*` (`claude-sonnet-4*`). An exact key
//! wins over any prefix; among prefixes the longest wins. A model without an entry has no
//! cost (`None`), never a made-up zero.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::types::Usage;

/// Price of one model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    /// Dollars per million input tokens.
    pub input_per_million_usd: f64,
    /// Dollars per million output tokens.
    pub output_per_million_usd: f64,
}

impl ModelPrice {
    /// Cost of `usage` at this price.
    pub fn cost(&self, usage: Usage) -> f64 {
        (usage.input_tokens as f64 * self.input_per_million_usd
            + usage.output_tokens as f64 * self.output_per_million_usd)
            / 1_000_000.0
    }
}

/// Model name (or `prefix*`) → price.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PriceTable {
    exact: BTreeMap<String, ModelPrice>,
    prefixes: Vec<(String, ModelPrice)>,
}

impl PriceTable {
    /// Builds the table from configuration entries.
    pub fn new(entries: &BTreeMap<String, ModelPrice>) -> Self {
        let mut table = PriceTable::default();
        for (key, price) in entries {
            match key.strip_suffix('*') {
                Some(prefix) => table.prefixes.push((prefix.to_owned(), *price)),
                None => {
                    table.exact.insert(key.clone(), *price);
                }
            }
        }
        table
            .prefixes
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        table
    }

    /// The price of `model`, if the table has one.
    pub fn price(&self, model: &str) -> Option<ModelPrice> {
        self.exact.get(model).copied().or_else(|| {
            self.prefixes
                .iter()
                .find(|(prefix, _)| model.starts_with(prefix.as_str()))
                .map(|(_, p)| *p)
        })
    }

    /// Cost of `usage` on `model`, `None` when the model has no price.
    pub fn cost(&self, model: &str, usage: Usage) -> Option<f64> {
        self.price(model).map(|p| p.cost(usage))
    }
}

/// The default table: vendors' published standard-tier list prices for common models, as of
/// late 2025. Prices change; override them under `llm.prices`. Tiered prices (Gemini Pro above
/// 200k prompt tokens, cache reads) are not modelled: the base tier is used.
pub fn default_prices() -> BTreeMap<String, ModelPrice> {
    let entries: [(&str, f64, f64); 11] = [
        ("gemini-2.5-pro", 1.25, 10.0),
        ("gemini-2.5-flash", 0.30, 2.50),
        ("gemini-2.5-flash-lite", 0.10, 0.40),
        ("gemini-2.0-flash", 0.10, 0.40),
        ("claude-sonnet-4*", 3.0, 15.0),
        ("claude-haiku-4-5*", 1.0, 5.0),
        ("claude-3-5-haiku*", 0.80, 4.0),
        ("gpt-4o", 2.50, 10.0),
        ("gpt-4o-mini", 0.15, 0.60),
        ("gpt-4.1", 2.0, 8.0),
        ("gpt-4.1-mini", 0.40, 1.60),
    ];
    entries
        .into_iter()
        .map(|(k, i, o)| {
            (
                k.to_owned(),
                ModelPrice {
                    input_per_million_usd: i,
                    output_per_million_usd: o,
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(i: f64, o: f64) -> ModelPrice {
        ModelPrice {
            input_per_million_usd: i,
            output_per_million_usd: o,
        }
    }

    #[test]
    fn exact_beats_prefix_and_longest_prefix_wins() {
        let mut entries = BTreeMap::new();
        entries.insert("claude-*".to_owned(), price(1.0, 1.0));
        entries.insert("claude-sonnet-*".to_owned(), price(3.0, 15.0));
        entries.insert("claude-sonnet-4-5".to_owned(), price(9.0, 9.0));
        let t = PriceTable::new(&entries);
        assert_eq!(t.price("claude-sonnet-4-5"), Some(price(9.0, 9.0)));
        assert_eq!(t.price("claude-sonnet-4-0"), Some(price(3.0, 15.0)));
        assert_eq!(t.price("claude-haiku"), Some(price(1.0, 1.0)));
        assert_eq!(t.price("gpt-4o"), None);
    }

    #[test]
    fn cost_is_per_million_tokens() {
        let mut entries = BTreeMap::new();
        entries.insert("m".to_owned(), price(2.0, 10.0));
        let t = PriceTable::new(&entries);
        let usage = Usage {
            input_tokens: 1_000,
            output_tokens: 500,
        };
        let cost = t.cost("m", usage).unwrap();
        assert!((cost - 0.007).abs() < 1e-12, "{cost}");
        assert_eq!(t.cost("other", usage), None);
    }

    #[test]
    fn default_table_does_not_price_flash_lite_as_flash() {
        let t = PriceTable::new(&default_prices());
        assert_eq!(
            t.price("gemini-2.5-flash-lite")
                .map(|p| p.input_per_million_usd),
            Some(0.10)
        );
        assert_eq!(
            t.price("gemini-2.5-flash").map(|p| p.input_per_million_usd),
            Some(0.30)
        );
    }
}
