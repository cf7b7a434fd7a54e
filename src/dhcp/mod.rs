//! PXE service: the DHCP wire codec and the sans-IO ProxyDHCP responder that tells PXE, UEFI
//! HTTP Boot and iPXE clients which farm server boots them. It never hands out addresses: the
//! site's DHCP server does that. The engine glue lives in `engine::dhcp`.

pub mod responder;
pub mod wire;
