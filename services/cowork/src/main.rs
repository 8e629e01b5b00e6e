//! `liquid-cowork`: runs the cowork service from its configuration (`--config FILE`, then
//! `LIQUID_COWORK__...` environment variables).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    liquid_runtime::main::<liquid_cowork::Cowork>().await
}
