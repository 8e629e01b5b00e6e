//! Compiles every .proto under proto/ with the vendored protoc, so a plain `cargo build` needs
//! no system package.

use std::path::Path;

const PROTOS: &[&str] = &["liquid/platform/v1/platform.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let files: Vec<_> = PROTOS.iter().map(|f| root.join(f)).collect();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    tonic_prost_build::configure().compile_with_config(config, &files, &[root])?;
    Ok(())
}
