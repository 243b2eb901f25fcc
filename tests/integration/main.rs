//! Integration tests: they build the guest components and drive the `fnhost` binary and library.

mod authoring;
mod cli_errors;
mod cluster;
mod conformance;
mod console;
mod crash;
mod delivery;
mod fuzz_corpus;
mod hostile;
mod library;
mod observability;
mod packages;
mod polyglot;
mod pulsar_cli;
mod replay;
mod sandbox;
mod seed;
mod storage;
mod support;
mod tenants;
mod topic_admin;
mod windows;
mod wire_security;
mod worker;
