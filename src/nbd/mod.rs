//! NBD (the Network Block Device protocol, fixed newstyle; plain newstyle for EXPORT_NAME only):
//! the wire format, the protocol on one connection as a sans-IO session (`session`), and the
//! per-target write caches behind writable exports (`cache`: one target's overlay; `target`:
//! which target a connection gets, and which boot it belongs to; `trace`: the per-connection I/O trace). The engine runs sessions on
//! its one TCP driver (src/engine/nbd.rs is the glue).

pub mod cache;
pub mod session;
pub mod target;
pub mod token;
pub mod trace;
pub mod wire;
