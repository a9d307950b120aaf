//! Compiles `proto/reactive_lock.proto` with protox (pure Rust: no `protoc` needed) when a
//! gRPC feature is on. The proto lives inside this package so the published crate builds
//! from its own files. Also tells the crate whether the workspace README is beside it, for
//! its doctests.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/reactive_lock.proto");
    // The workspace README's examples run as this crate's doctests, in the repository only:
    // the published archive holds this crate's own README, not the workspace's.
    println!("cargo:rustc-check-cfg=cfg(workspace_readme)");
    if std::path::Path::new("../README.md").exists() {
        println!("cargo:rerun-if-changed=../README.md");
        println!("cargo:rustc-cfg=workspace_readme");
    }
    if std::env::var_os("CARGO_FEATURE_GRPC").is_none() {
        return Ok(());
    }
    let descriptors = protox::compile(["reactive_lock.proto"], ["proto"])?;
    // The server stubs only for the hub: a client build carries no server code.
    let server = std::env::var_os("CARGO_FEATURE_GRPC_SERVER").is_some();
    tonic_prost_build::configure()
        .build_server(server)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
