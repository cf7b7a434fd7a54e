//! NBD (the Network Block Device protocol, fixed newstyle): the wire format, and the per-target
//! write caches behind writable exports (`cache`: one target's overlay; `target`: which
//! target a connection gets). The engine glue (src/engine/nbd.rs) drives them.

pub mod cache;
pub mod session;
pub mod target;
pub mod token;
pub mod wire;
