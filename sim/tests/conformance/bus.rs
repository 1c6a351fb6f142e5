//! Runs the event-bus conformance cases (being written).
