//! NBD (the Network Block Device protocol, fixed newstyle): the wire format, and the per-target
//! write caches behind writable exports. The engine glue (src/engine/nbd.rs) drives them.

pub mod cache;
pub mod token;
pub mod wire;
