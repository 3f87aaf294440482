//! One module per command of the `vericonv` binary; [`options`] holds what they share.

pub(crate) mod adapters;
pub(crate) mod attack;
pub(crate) mod bench;
pub(crate) mod conv_demo;
pub(crate) mod convert;
pub(crate) mod demo;
pub(crate) mod eval;
pub(crate) mod options;
#[cfg(feature = "tract")]
pub(crate) mod run;
pub(crate) mod serve;
