//! Generated protobuf and gRPC code, one module per `.proto` package.
#![allow(clippy::all, missing_docs)]

pub mod common {
    tonic::include_proto!("fafnir.common");
}
pub mod events {
    tonic::include_proto!("fafnir.events");
}
pub mod auth {
    tonic::include_proto!("fafnir.auth");
}
pub mod market {
    tonic::include_proto!("fafnir.market");
}
pub mod portfolio {
    tonic::include_proto!("fafnir.portfolio");
}
pub mod orders {
    tonic::include_proto!("fafnir.orders");
}
pub mod engine {
    tonic::include_proto!("fafnir.engine");
}
pub mod gateway {
    tonic::include_proto!("fafnir.gateway");
}
/// The gRPC health protocol, for the simulated build's own Health server
/// (the real build uses `tonic_health::pb`); see `services::health`.
#[cfg(madsim)]
pub mod health {
    tonic::include_proto!("grpc.health.v1");
}
