//! What the integration tests share: a PKI made at test time, loopback apps, and a small mesh
//! of real sidecars on the test's runtime.
// Each test binary uses a different part of this module.
#![allow(dead_code)]

pub mod app;
pub mod mesh;
pub mod pki;
