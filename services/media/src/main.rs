//! `liquid-media`: runs the media service from its configuration (`--config FILE`, then
//! `LIQUID_MEDIA__...` environment variables).

/// mimalloc rather than glibc's malloc: faster on the many small per-request allocations
/// (BENCHMARKS.md, A2A, "mimalloc").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    liquid_runtime::main::<liquid_media::Media>().await
}
