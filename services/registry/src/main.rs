//! `liquid-registry`: runs the registry service from its configuration (`--config FILE`, then
//! `LIQUID_REGISTRY__...` environment variables).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    liquid_runtime::main::<liquid_registry::Registry>().await
}
