//! `liquid-gateway`: runs the gateway service from its configuration (`--config FILE`, then
//! `LIQUID_GATEWAY__...` environment variables).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    liquid_runtime::main::<liquid_gateway::Gateway>().await
}
