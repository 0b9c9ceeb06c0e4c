//! The bench's settings, from the environment.

use std::time::Duration;

use crate::Error;

/// What to run.
pub struct Config {
    /// Plugin counts, one run each.
    pub sizes: Vec<usize>,
    /// echo-llm servers the endpoint plugins share.
    pub backends: usize,
    /// The longest any one wait may take.
    pub timeout: Duration,
    /// The idle window.
    pub idle: Duration,
    /// How many times the real plugins are scaled up (and down again between rounds): each
    /// round adds one sample per real plugin to the publication latencies.
    pub rounds: usize,
}

impl Config {
    /// Reads `BENCH_SCALE_*`; a malformed value is an error naming the variable.
    pub fn from_env() -> Result<Self, Error> {
        let sizes = match std::env::var("BENCH_SCALE_SIZES") {
            Ok(raw) => parse_sizes(&raw)?,
            Err(_) => vec![100, 1000, 10_000],
        };
        Ok(Self {
            sizes,
            backends: number("BENCH_SCALE_BACKENDS", 5)?.max(1) as usize,
            timeout: Duration::from_secs(number("BENCH_SCALE_TIMEOUT_SECS", 600)?),
            idle: Duration::from_secs(number("BENCH_SCALE_IDLE_SECS", 300)?),
            rounds: number("BENCH_SCALE_ROUNDS", 3)?.max(1) as usize,
        })
    }
}

fn parse_sizes(raw: &str) -> Result<Vec<usize>, Error> {
    let sizes = raw
        .split_whitespace()
        .map(|s| match s.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!(
                "BENCH_SCALE_SIZES: {s:?} is not a positive whole number"
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if sizes.is_empty() {
        return Err("BENCH_SCALE_SIZES is empty".into());
    }
    Ok(sizes)
}

fn number(name: &str, default: u64) -> Result<u64, Error> {
    match std::env::var(name) {
        Ok(raw) => raw
            .trim()
            .parse()
            .map_err(|_| format!("{name}: {raw:?} is not a whole number").into()),
        Err(_) => Ok(default),
    }
}
