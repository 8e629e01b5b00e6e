//! Grafana dashboards against what services export: the `liquid_*` metric names a dashboard's
//! queries use, and those a Prometheus scrape does not have, so a renamed or dropped metric
//! fails a test instead of leaving a panel without data.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

/// Every `liquid_*` metric name the dashboard at `path` queries: the words starting with
/// `liquid_` in each panel `expr` and variable `definition`, wherever they nest (rows, panels,
/// templating). Panics when the file is not a dashboard that queries any.
pub fn queried_metrics(path: &Path) -> BTreeSet<String> {
    let text = std::fs::read(path)
        .unwrap_or_else(|e| panic!("cannot read the dashboard {}: {e}", path.display()));
    let dashboard: Value = serde_json::from_slice(&text)
        .unwrap_or_else(|e| panic!("the dashboard {} is not json: {e}", path.display()));
    let mut queries = Vec::new();
    collect_queries(&dashboard, &mut queries);
    let metrics: BTreeSet<String> = queries
        .iter()
        .flat_map(|query| query.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|word| word.starts_with("liquid_"))
        .map(str::to_owned)
        .collect();
    assert!(
        !metrics.is_empty(),
        "the dashboard {} queries no liquid_* metric",
        path.display()
    );
    metrics
}

fn collect_queries(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr" | "definition", Value::String(query)) => out.push(query.clone()),
                    _ => collect_queries(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_queries(item, out)),
        _ => {}
    }
}

/// The names of `metrics` that the Prometheus text `scrape` has no series of (no line that
/// starts with the name followed by `{` or a space; a histogram's `_bucket`, `_sum` and
/// `_count` series are named as such).
pub fn missing_from<'a>(scrape: &str, metrics: &'a BTreeSet<String>) -> Vec<&'a str> {
    metrics
        .iter()
        .map(String::as_str)
        .filter(|metric| {
            !scrape.lines().any(|line| {
                line.strip_prefix(metric)
                    .is_some_and(|rest| rest.starts_with(['{', ' ']))
            })
        })
        .collect()
}

/// Asserts that `scrape` exports every metric the dashboard at `path` queries.
pub fn assert_exported(scrape: &str, path: &Path) {
    let queried = queried_metrics(path);
    let missing = missing_from(scrape, &queried);
    assert!(
        missing.is_empty(),
        "the dashboard {} queries {missing:?}, which /metrics does not export",
        path.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_nested_panels_and_variables_are_checked_against_whole_series_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.json");
        let dashboard = serde_json::json!({
            "panels": [{"type": "row", "panels": [{"targets": [
                {"expr": "sum(rate(liquid_a_total{x=\"1\"}[5m])) / sum(liquid_b_seconds_bucket)"}
            ]}]}],
            "templating": {"list": [{"definition": "label_values(liquid_c, instance)"}]}
        });
        std::fs::write(&path, dashboard.to_string()).unwrap();
        let queried = queried_metrics(&path);
        assert_eq!(
            queried.iter().map(String::as_str).collect::<Vec<_>>(),
            ["liquid_a_total", "liquid_b_seconds_bucket", "liquid_c"]
        );
        let scrape =
            "liquid_a_total{x=\"1\"} 3\nliquid_b_seconds_bucket{le=\"0.1\"} 1\nliquid_cc 2\n";
        // `liquid_cc` is another metric, not a series of `liquid_c`.
        assert_eq!(missing_from(scrape, &queried), ["liquid_c"]);
        assert_exported(&format!("{scrape}liquid_c 1\n"), &path);
    }
}
