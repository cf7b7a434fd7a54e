//! iSCSI target (RFC 7143, ErrorRecoveryLevel 0): the text key lists (`text`), the login phase as
//! a sans-IO state machine (`login`), CHAP with an in-tree MD5 (`chap`, `md5`). The PDU codec,
//! the SCSI command set and the session on the engine's TCP driver live beside them.

pub mod chap;
pub mod login;
pub mod md5;
pub mod text;
