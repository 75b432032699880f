//! Compiles `proto/` with protox (pure Rust: no system `protoc` needed) and
//! generates prost messages and tonic clients and servers from it.

use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time: a build script compiled in another checkout (a copied
    // target directory) must still compile this checkout's contract.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "cpis/common/v1/common.proto",
        "cpis/registry/v1/registry.proto",
        "cpis/attendance/v1/attendance.proto",
        "cpis/notification/v1/notification.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let fds = protox::compile(files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("cpis_descriptor.bin"), fds.encode_to_vec())?;
    // Our codec: prost with a small first encode buffer (see `src/codec.rs`).
    tonic_prost_build::configure()
        .codec_path("crate::codec::Codec")
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
