//! NBD (the Network Block Device protocol, fixed newstyle): the wire constants and the sans-IO
//! pieces the engine glue drives. This first slice serves vdisks read-only: handshake options
//! EXPORT_NAME, LIST, INFO, GO and ABORT (others answered NBD_REP_ERR_UNSUP, structured replies
//! declined, so clients use simple replies); READ from the chain, FLUSH, DISC; writes get EPERM.

pub mod wire;
