//! The remote tests' harness alone, with its self-tests: redis-server on a Unix socket, over
//! TCP as the README's ACL user and over TLS, and agents re-run from this binary.

#[path = "remote/harness.rs"]
mod harness;
