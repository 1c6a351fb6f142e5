//! Event-bus conformance cases (being written).
