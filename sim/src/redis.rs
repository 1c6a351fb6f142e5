//! The simulated Redis (being written).
