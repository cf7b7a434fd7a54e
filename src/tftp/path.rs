//! Request names under `tftp.root`: the rules live in [`crate::bootfiles`], shared with HTTP
//! /boot, and files are opened by the engine (`engine/files.rs`) beneath the root's descriptor.

pub use crate::bootfiles::{normalise, Refused};
