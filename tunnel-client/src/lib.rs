//! Porthole client daemon (`porthole`).
#![warn(missing_docs)]

pub mod capture;
pub mod inspector;
