//! Scraping a replica's Prometheus metrics (`GET /metrics`) and the
//! differences between two scrapes.

use anyhow::{bail, Context};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest metrics page read.
const PAGE_MAX: usize = 4 * 1024 * 1024;
/// One scrape's time limit.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);

/// One sample series: metric name and labels.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Series {
    /// The metric name (`pbft_fsyncs_total`).
    pub name: String,
    /// Its labels, by name.
    pub labels: BTreeMap<String, String>,
}

/// Every sample of one scrape.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Samples(pub BTreeMap<Series, f64>);

impl Samples {
    /// Parses the Prometheus text format (comments and malformed lines skipped).
    pub fn parse(text: &str) -> Samples {
        let mut out = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some((series, value)) = parse_line(line) {
                out.insert(series, value);
            }
        }
        Samples(out)
    }

    /// The value of `name` with exactly `labels`, or 0 if absent.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .find(|(s, _)| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map_or(0.0, |(_, v)| *v)
    }

    /// Whether any series is named `name`.
    pub fn has(&self, name: &str) -> bool {
        self.0.keys().any(|s| s.name == name)
    }

    /// `self - before`, series by series (a series missing before counts from 0).
    pub fn minus(&self, before: &Samples) -> Samples {
        Samples(
            self.0
                .iter()
                .map(|(s, v)| (s.clone(), v - before.0.get(s).copied().unwrap_or(0.0)))
                .collect(),
        )
    }

    /// Adds every series of `other` into `self`.
    pub fn add(&mut self, other: &Samples) {
        for (s, v) in &other.0 {
            *self.0.entry(s.clone()).or_default() += v;
        }
    }

    /// The buckets `(upper bound, cumulative count)` of histogram `name`
    /// whose other labels are `labels`, in increasing bound order.
    pub fn buckets(&self, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
        let bucket = format!("{name}_bucket");
        let mut out: Vec<(f64, f64)> = self
            .0
            .iter()
            .filter(|(s, _)| {
                s.name == bucket
                    && s.labels.len() == labels.len() + 1
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .filter_map(|(s, v)| {
                let le = s.labels.get("le")?;
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((bound, *v))
            })
            .collect();
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }
}

fn parse_line(line: &str) -> Option<(Series, f64)> {
    let (head, value) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}')?;
            let name = &line[..open];
            let labels = parse_labels(&line[open + 1..close])?;
            let value = line[close + 1..].split_whitespace().next()?;
            (
                Series {
                    name: name.to_string(),
                    labels,
                },
                value,
            )
        }
        None => {
            let mut parts = line.split_whitespace();
            let name = parts.next()?;
            (
                Series {
                    name: name.to_string(),
                    labels: BTreeMap::new(),
                },
                parts.next()?,
            )
        }
    };
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((head, value))
}

fn parse_labels(text: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().to_string();
        let after = rest[eq + 1..].strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        labels.insert(key, value);
        rest = after[end + 1..].trim_start().trim_start_matches(',').trim();
    }
    Some(labels)
}

/// The `q` quantile of a histogram given as cumulative buckets, linearly
/// interpolated inside the bucket (as Prometheus' `histogram_quantile`);
/// `None` without observations. A quantile in the `+Inf` bucket is the
/// highest finite bound.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return Some(lower.0);
            }
            let in_bucket = count - lower.1;
            let share = if in_bucket > 0.0 {
                (rank - lower.1) / in_bucket
            } else {
                1.0
            };
            return Some(lower.0 + (bound - lower.0) * share);
        }
        lower = (bound, count);
    }
    Some(lower.0)
}

/// Scrapes `GET /metrics` from `addr`.
pub async fn scrape(addr: SocketAddr) -> anyhow::Result<Samples> {
    let page = tokio::time::timeout(SCRAPE_TIMEOUT, fetch(addr))
        .await
        .with_context(|| format!("{addr}: no metrics within {SCRAPE_TIMEOUT:?}"))??;
    Ok(Samples::parse(&page))
}

async fn fetch(addr: SocketAddr) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to the metrics server at {addr}"))?;
    stream
        .write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut page = Vec::new();
    (&mut stream)
        .take(PAGE_MAX as u64 + 1)
        .read_to_end(&mut page)
        .await?;
    if page.len() > PAGE_MAX {
        bail!("{addr}: metrics page larger than {PAGE_MAX} bytes");
    }
    let text = String::from_utf8(page).with_context(|| format!("{addr}: not UTF-8"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("{addr}: not an HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!(
            "{addr}: {}",
            head.lines().next().unwrap_or("empty response")
        );
    }
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# HELP x y\n# TYPE pbft_fsyncs_total counter\npbft_fsyncs_total 7\n\
        pbft_dropped_total{reason=\"stale \\\"view\\\"\",source=\"core\"} 2\n\
        pbft_phase_seconds_bucket{phase=\"commit\",le=\"0.001\"} 2\n\
        pbft_phase_seconds_bucket{phase=\"commit\",le=\"0.002\"} 6\n\
        pbft_phase_seconds_bucket{phase=\"commit\",le=\"+Inf\"} 8\n\
        garbage line\n";

    #[test]
    fn parses_names_labels_and_escapes() {
        let s = Samples::parse(PAGE);
        assert_eq!(s.get("pbft_fsyncs_total", &[]), 7.0);
        assert_eq!(
            s.get(
                "pbft_dropped_total",
                &[("source", "core"), ("reason", "stale \"view\"")]
            ),
            2.0
        );
        assert_eq!(s.get("missing", &[]), 0.0);
        assert_eq!(
            s.buckets("pbft_phase_seconds", &[("phase", "commit")]),
            vec![(0.001, 2.0), (0.002, 6.0), (f64::INFINITY, 8.0)]
        );
    }

    #[test]
    fn deltas_and_quantiles() {
        let before = Samples::parse("a 1\nb 5\n");
        let after = Samples::parse("a 4\nb 5\nc 2\n");
        let d = after.minus(&before);
        assert_eq!(
            (d.get("a", &[]), d.get("b", &[]), d.get("c", &[])),
            (3.0, 0.0, 2.0)
        );
        let b = [(0.001, 2.0), (0.002, 6.0), (f64::INFINITY, 8.0)];
        assert_eq!(quantile(&b, 0.25), Some(0.001));
        assert_eq!(quantile(&b, 0.5), Some(0.0015));
        assert_eq!(quantile(&b, 0.99), Some(0.002));
        assert_eq!(quantile(&[(0.001, 0.0), (f64::INFINITY, 0.0)], 0.5), None);
    }
}
