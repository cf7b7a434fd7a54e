//! iSCSI target (RFC 7143, ErrorRecoveryLevel 0): every vdisk as one target IQN with LUN 0,
//! served read-only from the image chain with the per-target write cache NBD uses. `wire` is
//! the PDU codec, `session` the sans-IO connection on the engine's TCP driver (engine/iscsi.rs
//! is its glue); login (`login`, `text`, `chap` with an in-tree `md5`) and the SCSI command set
//! (`scsi`) are pure modules beside them.

pub mod boot;
pub mod chap;
pub mod login;
pub mod md5;
pub mod scsi;
pub mod session;
pub mod text;
pub mod wire;
