//! iSCSI target (RFC 7143): vDisks as SCSI disks for initiators that cannot stay on HTTP or
//! NBD (Windows, open-iscsi, iPXE's sanboot + iBFT). Sans-IO like the other protocols.

pub mod scsi;
