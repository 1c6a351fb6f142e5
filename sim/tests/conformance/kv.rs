//! Runs the kv conformance cases (being written).
