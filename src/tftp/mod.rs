//! TFTP bootstraps: the wire codec and the sans-IO read-transfer state machine, plus path
//! resolution under `tftp.root`. The engine glue lives in `engine::tftp`.

pub mod client;
pub mod ending;
pub mod netascii;
pub mod path;
pub mod server;
pub mod transfer;
pub mod wire;
