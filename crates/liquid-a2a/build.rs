//! Compiles the normative `lf.a2a.v1` proto (vendored under `proto/`) twice over one descriptor
//! set: prost/tonic for the gRPC binding, pbjson for ProtoJSON serde on the very same types, so
//! the three bindings share one set of structs. Well-known types come from `pbjson-types`, whose
//! serde forms are the ProtoJSON ones (RFC 3339 timestamps, Struct/Value as plain JSON).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not with `env!`: the build script binary may be shared between
    // checkouts through one target directory.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    let a2a = root.join("lf/a2a/v1/a2a.proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = out_dir.join("a2a-descriptors.bin");

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let vendored_include = protoc_bin_vendored::include_path()?;
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptors)
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        // pbjson-types writes `+00:00`; the spec (§5.6.1) wants a `Z` suffix, so timestamps get
        // a type of our own with the ProtoJSON form.
        .extern_path(".google.protobuf.Timestamp", "crate::timestamp::Timestamp")
        .compile_with_config(config, &[a2a], &[root, vendored_include])?;

    let descriptor_set = std::fs::read(&descriptors)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_set)?
        .out_dir(&out_dir)
        // Spec §5.7: unrecognized fields SHOULD be ignored (forward compatibility).
        .ignore_unknown_fields()
        .build(&[".lf.a2a.v1"])?;
    accept_null_for_defaults(&out_dir.join("lf.a2a.v1.serde.rs"))?;
    Ok(())
}

/// ProtoJSON reads `null` as the field's default value; pbjson-build only does so for message
/// fields. Rewrites the reads of scalar, string, repeated and map fields to accept `null`.
fn accept_null_for_defaults(path: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let generated = std::fs::read_to_string(path)?;
    let patched = generated.replace(
        "= Some(map_.next_value()?);",
        "= Some(map_.next_value::<::std::option::Option<_>>()?.unwrap_or_default());",
    );
    std::fs::write(path, patched)?;
    Ok(())
}
