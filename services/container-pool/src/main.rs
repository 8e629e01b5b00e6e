//! `liquid-container-pool`: runs the container-pool service from its configuration (`--config FILE`, then
//! `LIQUID_CONTAINER_POOL__...` environment variables).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    liquid_runtime::main::<liquid_container_pool::ContainerPool>().await
}
