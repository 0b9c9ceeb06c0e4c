//! The standard `process_*` metrics (CPU, memory, file descriptors, start time), read from
//! `/proc/self` at each scrape, with the names and meanings every Prometheus client library
//! uses, so stock dashboards and alerts work. prometheus-client has no such collector.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Clock ticks per second of the CPU times in `/proc/*/stat`. The kernel reports them in
/// USER_HZ, which is 100 on every architecture Linux exports to user space (Prometheus's own
/// procfs library assumes the same).
const USER_HZ: f64 = 100.0;

/// What `/proc/self` says about this process at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: Option<f64>,
    /// Resident memory, in bytes.
    pub resident_bytes: Option<i64>,
    /// Virtual memory size, in bytes.
    pub virtual_bytes: Option<i64>,
    /// Open file descriptors.
    pub open_fds: Option<i64>,
    /// The soft limit on open file descriptors (`None` also when unlimited).
    pub max_fds: Option<i64>,
    /// Start time since the Unix epoch, in seconds.
    pub start_time_seconds: Option<f64>,
}

impl ProcessStats {
    /// Reads the stats of this process; what cannot be read (not Linux, no `/proc`) is `None`.
    pub fn read() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        let stat = read("/proc/self/stat").and_then(|s| parse_stat(&s));
        let boot_time = read("/proc/stat").and_then(|s| parse_boot_time(&s));
        Self {
            cpu_seconds: stat
                .as_ref()
                .map(|s| (s.utime_ticks + s.stime_ticks) as f64 / USER_HZ),
            resident_bytes: read("/proc/self/status").and_then(|s| parse_resident(&s)),
            virtual_bytes: stat
                .as_ref()
                .and_then(|s| i64::try_from(s.vsize_bytes).ok()),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .and_then(|d| i64::try_from(d.count()).ok()),
            max_fds: read("/proc/self/limits").and_then(|s| parse_max_fds(&s)),
            start_time_seconds: stat
                .zip(boot_time)
                .map(|(s, boot)| boot as f64 + s.start_ticks as f64 / USER_HZ),
        }
    }
}

/// The fields of `/proc/self/stat` the metrics use.
#[derive(Debug, PartialEq)]
struct Stat {
    utime_ticks: u64,
    stime_ticks: u64,
    start_ticks: u64,
    vsize_bytes: u64,
}

/// Parses `/proc/PID/stat` (proc(5)). The command name in parentheses may hold spaces and
/// parentheses itself, so fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): field N is fields[N - 3].
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime_ticks: field(14)?,
        stime_ticks: field(15)?,
        start_ticks: field(22)?,
        vsize_bytes: field(23)?,
    })
}

/// `btime` of `/proc/stat`: boot time in seconds since the epoch.
fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// `VmRSS` of `/proc/PID/status` (kB), in bytes.
fn parse_resident(text: &str) -> Option<i64> {
    let line = text.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib: i64 = line.split_whitespace().next()?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The soft limit of "Max open files" in `/proc/PID/limits`.
fn parse_max_fds(text: &str) -> Option<i64> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?;
    line.split_whitespace().next()?.parse().ok()
}

/// Encodes [`ProcessStats::read`] on every scrape.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = ProcessStats::read();
        if let Some(v) = stats.cpu_seconds {
            let metric = ConstCounter::new(v);
            metric.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                metric.metric_type(),
            )?)?;
        }
        let gauges: [(&str, &str, Option<f64>); 5] = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                stats.resident_bytes.map(|v| v as f64),
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                stats.virtual_bytes.map(|v| v as f64),
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                stats.open_fds.map(|v| v as f64),
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                stats.max_fds.map(|v| v as f64),
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                stats.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                let metric = ConstGauge::new(v);
                metric.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    metric.metric_type(),
                )?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        // A command name with a space and a parenthesis in it.
        let text = "4242 (tokio (rt) w) S 1 4242 4242 0 -1 4194560 2500 0 3 0 \
                    731 269 0 0 20 0 9 0 123456 104857600 3000 18446744073709551615";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                utime_ticks: 731,
                stime_ticks: 269,
                start_ticks: 123456,
                vsize_bytes: 104857600,
            })
        );
        assert_eq!(parse_stat("4242 (short) S 1 2"), None, "too few fields");
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn status_limits_and_boot_time_are_read_by_their_keys() {
        let status = "Name:\thector-operator\nVmSize:\t  102400 kB\nVmRSS:\t   20480 kB\n";
        assert_eq!(parse_resident(status), Some(20480 * 1024));
        assert_eq!(parse_resident("Name:\tx\n"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max cpu time              unlimited            unlimited            seconds\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(parse_max_fds(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_max_fds(unlimited), None);
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n"),
            Some(1_700_000_000)
        );
    }

    /// This process, as the collector sees it: plausible figures for a live test binary.
    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_plausible_stats() {
        let file = std::fs::File::open("/proc/self/status").expect("an open file");
        let s = ProcessStats::read();
        drop(file);
        assert!(s.resident_bytes.is_some_and(|b| b > 0), "{s:?}");
        assert!(
            s.virtual_bytes
                .zip(s.resident_bytes)
                .is_some_and(|(v, r)| v >= r),
            "{s:?}"
        );
        // stdin/stdout/stderr and the file held open above.
        assert!(s.open_fds.is_some_and(|n| n >= 1), "{s:?}");
        assert!(
            s.max_fds.is_none_or(|m| m >= s.open_fds.unwrap_or(0)),
            "{s:?}"
        );
        assert!(s.cpu_seconds.is_some_and(|c| c >= 0.0), "{s:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs_f64();
        // Started in the past, and after 2020 (clock skew of a few ticks allowed).
        assert!(
            s.start_time_seconds
                .is_some_and(|t| t <= now + 1.0 && t > 1_577_836_800.0),
            "{s:?} (now {now})"
        );
    }
}
