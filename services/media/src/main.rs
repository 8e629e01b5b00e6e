//! `liquid-media`: runs the media service from its configuration (`--config FILE`, then
//! `LIQUID_MEDIA__...` environment variables).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    liquid_runtime::main::<liquid_media::Media>().await
}
