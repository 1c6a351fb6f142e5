//! (the simulated runner is being written)
