//! Compiles the protos with a vendored `protoc`, so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; the variable is read by prost-build below.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let mut protos = vec![
        "proto/common.proto",
        "proto/events.proto",
        "proto/auth.proto",
        "proto/market.proto",
        "proto/portfolio.proto",
        "proto/orders.proto",
        "proto/engine.proto",
        "proto/gateway.proto",
    ];
    // The health protocol: the real build serves tonic-health's; the
    // simulated build (`--cfg madsim`, where madsim-tonic cannot host it)
    // serves one generated from this file (see `services::health`).
    let health = "proto/health.proto";
    for proto in protos.iter().chain([&health]) {
        println!("cargo:rerun-if-changed={proto}");
    }
    if std::env::var_os("CARGO_CFG_MADSIM").is_some() {
        protos.push(health);
    }
    tonic_build::configure().compile_protos(&protos, &["proto"])?;
    Ok(())
}
