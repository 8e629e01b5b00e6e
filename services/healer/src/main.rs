//! `liquid-healer`: runs the healer service from its configuration (`--config FILE`, then
//! `LIQUID_HEALER__...` environment variables).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    liquid_runtime::main::<liquid_healer::Healer>().await
}
