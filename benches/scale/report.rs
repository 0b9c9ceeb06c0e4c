//! Figures as they come, the Markdown table of all sizes, and its place in
//! `docs/benchmarks.md` (between markers, so a re-run replaces only the table).

use std::fmt::Display;

use kube::Client;

use crate::Error;
use crate::metrics;

const START: &str = "<!-- bench-scale:start -->";
const END: &str = "<!-- bench-scale:end -->";
const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/benchmarks.md");

/// The figures of one size, in the order they were measured.
pub struct Column {
    /// Plugins in this run.
    pub n: usize,
    rows: Vec<(String, String)>,
}

impl Column {
    /// An empty column for `n` plugins.
    pub fn new(n: usize) -> Self {
        println!("\n## {} plugins", thousands(n));
        Self {
            n,
            rows: Vec::new(),
        }
    }

    /// Records a figure and prints it at once.
    pub fn add(&mut self, figure: &str, value: impl Display) {
        // One table cell: no column breaks, no line breaks.
        let value = value.to_string().replace('|', "/").replace('\n', " ");
        println!("{figure}: {value}");
        self.rows.push((figure.to_string(), value));
    }
}

/// `12345` as `12,345`.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Rows are figures, columns are sizes; a figure a size lacks shows as `–`.
pub fn table(columns: &[Column]) -> String {
    let mut figures: Vec<&str> = Vec::new();
    for (f, _) in columns.iter().flat_map(|c| c.rows.iter()) {
        if !figures.contains(&f.as_str()) {
            figures.push(f);
        }
    }
    let mut out = String::from("| figure |");
    for c in columns {
        out.push_str(&format!(" N = {} |", thousands(c.n)));
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(columns.len()));
    for f in figures {
        out.push_str(&format!("\n| {f} |"));
        for c in columns {
            let v = c
                .rows
                .iter()
                .find(|(r, _)| r == f)
                .map_or("–", |(_, v)| v.as_str());
            out.push_str(&format!(" {v} |"));
        }
    }
    out
}

/// What the figures were measured on: cores, memory, Kubernetes, operator build.
pub async fn machine(client: &Client) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or("unknown memory".to_string(), |kib| {
            format!("{:.1} GiB memory", kib / 1024.0 / 1024.0)
        });
    let kubernetes = client
        .apiserver_version()
        .await
        .map_or("unknown".to_string(), |v| v.git_version);
    let operator = match metrics::sample(client).await {
        Ok(s) => metrics::build(&s.text).unwrap_or_else(|| "unknown".into()),
        Err(_) => "unknown".into(),
    };
    let date = today().map_or(String::new(), |d| format!(" on {d}"));
    format!(
        "Measured{date} on {cores} cores and {memory}, the cluster and the bench on the same \
         machine; Kubernetes {kubernetes}, operator {operator}."
    )
}

/// Today's UTC date, `YYYY-MM-DD` (the civil-from-days conversion of the proleptic
/// Gregorian calendar).
fn today() -> Option<String> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    Some(format!("{year:04}-{month:02}-{day:02}"))
}

/// Puts `machine` and `table` between the markers of `docs/benchmarks.md` (appending them
/// when the file has none); returns the file's path.
pub fn write_doc(machine: &str, table: &str) -> Result<&'static str, Error> {
    let block = format!("{START}\n{machine}\n\n{table}\n{END}");
    let text = match std::fs::read_to_string(DOC) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "# Benchmarks\n".to_string(),
        Err(e) => return Err(format!("{DOC}: {e}").into()),
    };
    let updated = match (text.find(START), text.find(END)) {
        (Some(s), Some(e)) if s < e => format!("{}{block}{}", &text[..s], &text[e + END.len()..]),
        _ => format!("{}\n{block}\n", text.trim_end()),
    };
    std::fs::write(DOC, updated).map_err(|e| format!("{DOC}: {e}"))?;
    Ok(DOC)
}
