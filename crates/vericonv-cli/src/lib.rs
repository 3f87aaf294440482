//! The harnesses behind the `vericonv` binary: the layer benchmark against plaintext engines
//! ([`mod@bench`]) and under load on a remote cloud ([`load`]), whole-model evaluation ([`eval`]) and the
//! curious cloud's attacks ([`attack`]), and the inputs and outputs of `vericonv run` ([`run`]).
//!
//! They live here, not in the libraries, so that tract, gemm and plotters are dependencies of
//! the command line only. This crate is not published; embed `vericonv`, `vericonv-gpu` and
//! `vericonv-model` instead.

#![warn(missing_docs)]

pub mod attack;
pub mod bench;
pub mod eval;
pub mod load;
pub mod run;
pub mod whole;
