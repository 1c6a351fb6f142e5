//! Compiles the protos with a vendored `protoc`, so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; the variable is read by prost-build below.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let protos = [
        "proto/common.proto",
        "proto/events.proto",
        "proto/auth.proto",
        "proto/market.proto",
        "proto/portfolio.proto",
        "proto/orders.proto",
        "proto/engine.proto",
        "proto/gateway.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_build::configure().compile_protos(&protos, &["proto"])?;
    Ok(())
}
