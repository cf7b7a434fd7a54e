//! The session driven as the engine drives it (filled in below).
