//! Kv conformance cases (being written).
