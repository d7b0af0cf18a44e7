//! Linearizability checking of recorded client histories (filled in by its own change).
