//! Compiles the plugin protocol with protox (pure Rust), so no system `protoc` is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    let files = [
        "hector/plugin/common.proto",
        "hector/plugin/llm.proto",
        "hector/plugin/database.proto",
        "hector/plugin/embedder.proto",
        "hector/plugin/tool.proto",
        "hector/plugin/reasoning.proto",
        "go-plugin/plugin.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let fds = protox::compile(files, [&root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
