//! The simulated JetStream broker (being written).
