//! Compiles every .proto under proto/liquid/ with the vendored protoc, so a plain `cargo build`
//! needs no system package. A new contract is picked up by dropping its file under
//! `proto/liquid/<service>/v1/`; the module tree is generated too (`_includes.rs`).

use std::path::{Path, PathBuf};

fn protos_under(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            protos_under(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time: the build script binary may be shared between checkouts through one
    // target directory, and `env!` would bake in the path of the checkout that compiled it.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let root = Path::new(&manifest_dir).join("../../proto");
    let ours = root.join("liquid");
    let mut files = Vec::new();
    protos_under(&ours, &mut files)?;
    // Sorted, so the generated code does not depend on directory order.
    files.sort();
    println!("cargo:rerun-if-changed={}", ours.display());
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .include_file("_includes.rs")
        .compile_with_config(config, &files, &[root])?;
    Ok(())
}
