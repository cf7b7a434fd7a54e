//! bootfarm: a network-boot appliance. See README.md for the user's view and
//! ../shared/DESIGN.md for the architecture; this crate is the library behind the `bootfarm`
//! binary and the `bootstorm` load generator.

pub mod bootfiles;
pub mod config;
pub mod demo;
pub mod dhcp;
pub mod doctor;
pub mod engine;
pub mod farm;
pub mod http;
pub mod image;
pub mod iscsi;
pub mod manual;
pub mod metrics;
pub mod nbd;
pub mod notify;
pub mod rng;
pub mod serve;
pub mod session;
pub mod tftp;
