//! The leader's /metrics (through the API server's Pod proxy) and the few readings of the
//! Prometheus text format the bench needs. A metric the running operator does not have yet
//! reads as `None`, never as zero.

use std::collections::BTreeMap;
use std::time::Instant;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::Api;

use crate::Error;

/// The operator's namespace and its leader Lease's name.
pub const OPERATOR_NAMESPACE: &str = "hector-system";
const LEASE: &str = "hector-operator";

/// One scrape of the leader.
#[derive(Clone)]
pub struct Sample {
    /// The leader's Pod name.
    pub leader: String,
    /// When it was scraped.
    pub at: Instant,
    /// The exposition text.
    pub text: String,
}

/// The Pod holding the leader Lease.
pub async fn leader(client: &Client) -> Result<String, Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    leases
        .get(LEASE)
        .await?
        .spec
        .and_then(|s| s.holder_identity)
        .ok_or_else(|| "no operator holds the lease".into())
}

/// Scrapes the leader's /metrics.
pub async fn sample(client: &Client) -> Result<Sample, Error> {
    let leader = leader(client).await?;
    let uri = format!("/api/v1/namespaces/{OPERATOR_NAMESPACE}/pods/{leader}:8080/proxy/metrics");
    let text = client
        .request_text(http::Request::get(uri).body(Vec::new())?)
        .await?;
    Ok(Sample {
        leader,
        at: Instant::now(),
        text,
    })
}

/// One series: its name, its labels, its value.
struct Series<'a> {
    name: &'a str,
    labels: BTreeMap<&'a str, &'a str>,
    value: f64,
}

fn parse_line(line: &str) -> Option<Series<'_>> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if rest.starts_with('{') {
        let close = label_end(rest)?;
        for pair in split_labels(&rest[1..close]) {
            let (k, v) = pair.split_once('=')?;
            labels.insert(k.trim(), v.trim().trim_matches('"'));
        }
        rest = &rest[close + 1..];
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Series {
        name,
        labels,
        value,
    })
}

/// The index of the `}` closing the label set that `s` opens, skipping quoted values.
fn label_end(s: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// Splits `a="x",b="y,z"` at the commas between pairs.
fn split_labels(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut quoted, mut escaped, mut start) = (false, false, 0);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < s.len() {
        parts.push(&s[start..]);
    }
    parts.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

fn series<'a>(text: &'a str, name: &'a str) -> impl Iterator<Item = Series<'a>> {
    text.lines()
        .filter_map(parse_line)
        .filter(move |s| s.name == name)
}

/// The sum of every series of `name`; `None` when there is none.
pub fn value(text: &str, name: &str) -> Option<f64> {
    series(text, name).map(|s| s.value).reduce(|a, b| a + b)
}

/// How much counter `name` grew from `a` to `b`: `None` when it is missing, when the leader
/// changed, or when it went down (a restart).
pub fn growth(a: &Sample, b: &Sample, name: &str) -> Option<f64> {
    if a.leader != b.leader {
        return None;
    }
    let d = value(&b.text, name)? - value(&a.text, name)?;
    (d >= 0.0).then_some(d)
}

/// Counter `name`'s rate per second from `a` to `b`.
pub fn rate(a: &Sample, b: &Sample, name: &str) -> Option<f64> {
    let secs = b.at.saturating_duration_since(a.at).as_secs_f64();
    (secs > 0.0).then_some(growth(a, b, name)? / secs)
}

/// CPU time used from `a` to `b`, in percent of one core.
pub fn cpu_percent(a: &Sample, b: &Sample) -> Option<f64> {
    Some(rate(a, b, "process_cpu_seconds_total")? * 100.0)
}

/// Cumulative bucket counts of histogram `name` by upper bound, summed over its label sets.
fn buckets(text: &str, name: &str) -> Option<Vec<(f64, f64)>> {
    let bucket = format!("{name}_bucket");
    let mut by_le: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for s in series(text, &bucket) {
        let le: f64 = match *s.labels.get("le")? {
            "+Inf" => f64::INFINITY,
            other => other.parse().ok()?,
        };
        // f64 has no Ord; its bits order the same for the non-negative bounds used here.
        by_le.entry(le.to_bits()).or_insert((le, 0.0)).1 += s.value;
    }
    (!by_le.is_empty()).then(|| by_le.into_values().collect())
}

/// Quantile `q` of histogram `name` over the observations made from `a` to `b`, by linear
/// interpolation inside the bucket as Prometheus' `histogram_quantile` does. `Err` says why
/// there is no figure.
pub fn quantile_between(a: &Sample, b: &Sample, name: &str, q: f64) -> Result<f64, String> {
    let after = buckets(&b.text, name).ok_or("n/a (no such metric)")?;
    let before = if a.leader == b.leader {
        buckets(&a.text, name).unwrap_or_default()
    } else {
        Vec::new()
    };
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, n)| {
            let earlier = before
                .iter()
                .find(|(l, _)| l == le)
                .map_or(0.0, |(_, c)| *c);
            (*le, (n - earlier).max(0.0))
        })
        .collect();
    quantile(&delta, q)
}

fn quantile(cumulative: &[(f64, f64)], q: f64) -> Result<f64, String> {
    let total = cumulative.last().map_or(0.0, |(_, n)| *n);
    if total <= 0.0 {
        return Err("n/a (no observations)".into());
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (le, n) in cumulative {
        if *n >= rank {
            if le.is_infinite() {
                return Err(format!("> {lower} s"));
            }
            let within = n - below;
            let fraction = if within > 0.0 {
                (rank - below) / within
            } else {
                1.0
            };
            return Ok(lower + (le - lower) * fraction);
        }
        (lower, below) = (*le, *n);
    }
    Err("n/a (inconsistent buckets)".into())
}

/// The operator's `version (commit)` from its build_info labels.
pub fn build(text: &str) -> Option<String> {
    let s = series(text, "hector_operator_build_info").next()?;
    let version = s.labels.get("version")?;
    Some(match s.labels.get("git_commit") {
        Some(c) if *c != "unknown" => format!("{version} ({})", &c[..c.len().min(12)]),
        _ => version.to_string(),
    })
}
