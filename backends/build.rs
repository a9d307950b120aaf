//! Compiles `proto/reactive_lock.proto` with protox (pure Rust: no `protoc` needed) when a
//! gRPC feature is on. The proto lives inside this package so the published crate builds
//! from its own files.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/reactive_lock.proto");
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
