//! gRPC's `grpc-timeout` header: parsed from the host's request and rewritten with the time
//! left when a call is sent (or retried), so the remote plugin sees the caller's deadline.

use std::time::Duration;

/// The header's name.
pub const HEADER: &str = "grpc-timeout";

/// The largest value the header may carry (at most eight digits).
const MAX_VALUE: u128 = 99_999_999;

/// Parses a `grpc-timeout` value such as `1500m`; `None` when malformed.
pub fn parse(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    match unit {
        "H" => Some(Duration::from_secs(n.checked_mul(3600)?)),
        "M" => Some(Duration::from_secs(n.checked_mul(60)?)),
        "S" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_millis(n)),
        "u" => Some(Duration::from_micros(n)),
        "n" => Some(Duration::from_nanos(n)),
        _ => None,
    }
}

/// Encodes `d` in the finest unit that fits eight digits, rounding up so a deadline is
/// never shortened by the encoding.
pub fn encode(d: Duration) -> String {
    let nanos = d.as_nanos();
    let units: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    for (per, unit) in units {
        let value = nanos.div_ceil(per);
        if value <= MAX_VALUE {
            return format!("{value}{unit}");
        }
    }
    format!("{MAX_VALUE}H")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_refuses_garbage() {
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse("4S"), Some(Duration::from_secs(4)));
        assert_eq!(parse("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(parse("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "10", "10x", "-1m", "123456789m", "1.5S", " 1S"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn encodes_in_the_finest_unit_that_fits_and_round_trips() {
        assert_eq!(encode(Duration::from_nanos(5)), "5n");
        assert_eq!(encode(Duration::from_millis(250)), "250000u");
        assert_eq!(encode(Duration::from_secs(5)), "5000000u");
        assert_eq!(encode(Duration::from_secs(200)), "200000m");
        assert_eq!(encode(Duration::from_nanos(100_000_001)), "100001u");
        for d in [
            Duration::from_millis(1),
            Duration::from_secs(30),
            Duration::from_secs(86_400),
        ] {
            let back = parse(&encode(d)).expect("round trip");
            assert!(back >= d && back - d < Duration::from_millis(1), "{d:?}");
        }
    }
}
