//! Processes of the launcher benchmarks: the servers they start, and where.

use std::path::PathBuf;
use std::process::Child;

/// A server process, killed when dropped.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn echo_llm() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_hector-plugin-launcher")).with_file_name("echo-llm");
    assert!(
        p.exists(),
        "{} missing: run `cargo build --release --workspace --bins`",
        p.display()
    );
    p
}
