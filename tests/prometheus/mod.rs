//! A strict parser of the Prometheus text exposition format (version 0.0.4), for checking
//! what `/metrics` serves: every line must parse, every sample must belong to the family its
//! `# TYPE` line declared just before, no series may repeat, and histograms must be whole
//! (cumulative buckets ending in `le="+Inf"` equal to `_count`, with `_sum`).

#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, BTreeSet};

/// A metric family's declared type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition.
#[derive(Debug, Default)]
pub struct Exposition {
    /// Family name → (type, help).
    pub families: BTreeMap<String, (Kind, String)>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// The value of the sample `name` whose labels include all of `labels`; panics if several
    /// match.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert!(
            matching.len() <= 1,
            "{name} {labels:?} matches {} samples",
            matching.len()
        );
        matching.first().map(|s| s.value)
    }

    /// The sum of every sample `name` whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }
}

/// Parses `text`, or says which line is wrong and why.
pub fn parse(text: &str) -> Result<Exposition, String> {
    let mut out = Exposition::default();
    // The family whose samples are being read, and every family already finished.
    let mut current: Option<(String, Kind)> = None;
    let mut finished: BTreeSet<String> = BTreeSet::new();
    let mut helps: BTreeMap<String, String> = BTreeMap::new();
    let mut seen: BTreeSet<(String, Vec<(String, String)>)> = BTreeSet::new();
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("the exposition does not end with a newline".into());
    }
    for (index, line) in text.lines().enumerate() {
        let at = |why: String| format!("line {}: {why}: {line:?}", index + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            check_metric_name(name).map_err(at)?;
            unescape_help(help).map_err(at)?;
            if helps.insert(name.to_owned(), help.to_owned()).is_some() {
                return Err(at(format!("second HELP for {name}")));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .ok_or_else(|| at("TYPE without a type".into()))?;
            check_metric_name(name).map_err(at)?;
            let kind = match kind {
                "counter" => Kind::Counter,
                "gauge" => Kind::Gauge,
                "histogram" => Kind::Histogram,
                "summary" => Kind::Summary,
                "untyped" => Kind::Untyped,
                other => return Err(at(format!("unknown type {other}"))),
            };
            if out.families.contains_key(name) {
                return Err(at(format!("second TYPE for {name}")));
            }
            if let Some((previous, _)) = current.take() {
                finished.insert(previous);
            }
            let help = helps.get(name).cloned().unwrap_or_default();
            out.families.insert(name.to_owned(), (kind, help));
            current = Some((name.to_owned(), kind));
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let sample = parse_sample(line).map_err(at)?;
        let family = family_of(&sample.name, current.as_ref());
        let Some((family_name, kind)) = family else {
            return Err(at(format!(
                "sample {} outside the family declared before it",
                sample.name
            )));
        };
        if finished.contains(&family_name) {
            return Err(at(format!("family {family_name} is not contiguous")));
        }
        if kind == Kind::Counter && (sample.value.is_nan() || sample.value < 0.0) {
            return Err(at("a counter below zero or NaN".into()));
        }
        let key = (
            sample.name.clone(),
            sample
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        );
        if !seen.insert(key) {
            return Err(at("the same series twice".into()));
        }
        out.samples.push(sample);
    }
    check_histograms(&out)?;
    Ok(out)
}

/// The family a sample belongs to: the current one, by name or by a suffix its type allows.
fn family_of(sample: &str, current: Option<&(String, Kind)>) -> Option<(String, Kind)> {
    let (family, kind) = current?;
    let allowed: &[&str] = match kind {
        Kind::Histogram => &["_bucket", "_sum", "_count"],
        Kind::Summary => &["", "_sum", "_count"],
        Kind::Counter => &["", "_total"],
        Kind::Gauge | Kind::Untyped => &[""],
    };
    allowed
        .iter()
        .any(|suffix| format!("{family}{suffix}") == sample)
        .then(|| (family.clone(), *kind))
}

/// Of one histogram series: its buckets `(le, count)` in order, its `_count`, whether it has a
/// `_sum`.
type HistogramSeries = (Vec<(f64, f64)>, Option<f64>, bool);

fn check_histograms(out: &Exposition) -> Result<(), String> {
    for (family, (kind, _)) in &out.families {
        if *kind != Kind::Histogram {
            continue;
        }
        // Per label set without `le`: the buckets in order, the count, the sum.
        let mut series: BTreeMap<Vec<(String, String)>, HistogramSeries> = BTreeMap::new();
        for sample in &out.samples {
            let rest: Vec<(String, String)> = sample
                .labels
                .iter()
                .filter(|(k, _)| k.as_str() != "le")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let entry = series.entry(rest).or_default();
            if sample.name == format!("{family}_bucket") {
                let le = sample
                    .labels
                    .get("le")
                    .ok_or_else(|| format!("{family}_bucket without le"))?;
                entry.0.push((parse_value(le)?, sample.value));
            } else if sample.name == format!("{family}_count") {
                entry.1 = Some(sample.value);
            } else if sample.name == format!("{family}_sum") {
                entry.2 = true;
            }
        }
        for (labels, (buckets, count, has_sum)) in series {
            if buckets.is_empty() && count.is_none() && !has_sum {
                continue;
            }
            let count = count.ok_or_else(|| format!("{family} {labels:?}: no _count"))?;
            if !has_sum {
                return Err(format!("{family} {labels:?}: no _sum"));
            }
            let mut previous = (f64::NEG_INFINITY, 0.0);
            for (le, n) in &buckets {
                if *le <= previous.0 || *n < previous.1 {
                    return Err(format!(
                        "{family} {labels:?}: buckets not ascending and cumulative"
                    ));
                }
                previous = (*le, *n);
            }
            if previous.0 != f64::INFINITY || previous.1 != count {
                return Err(format!(
                    "{family} {labels:?}: the +Inf bucket is missing or differs from _count"
                ));
            }
        }
    }
    Ok(())
}

fn check_metric_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        Ok(())
    } else {
        Err(format!("bad metric name {name:?}"))
    }
}

fn check_label_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') && !name.starts_with("__") {
        Ok(())
    } else {
        Err(format!("bad label name {name:?}"))
    }
}

fn unescape_help(help: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = help.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                other => return Err(format!("bad escape in HELP: \\{other:?}")),
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => text
            .parse::<f64>()
            .ok()
            .filter(|_| !text.contains(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E'))
            .ok_or_else(|| format!("bad value {text:?}")),
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    check_metric_name(name)?;
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest.find('=').ok_or("label without =")?;
            let label = &rest[..eq];
            check_label_name(label)?;
            rest = rest[eq + 1..]
                .strip_prefix('"')
                .ok_or("label value not quoted")?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                let (i, c) = chars.next().ok_or("unterminated label value")?;
                match c {
                    '"' => break i,
                    '\\' => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => return Err(format!("bad escape in label value: {other:?}")),
                    },
                    '\n' => return Err("newline in label value".into()),
                    c => value.push(c),
                }
            };
            if labels.insert(label.to_owned(), value).is_some() {
                return Err(format!("label {label} twice"));
            }
            rest = &rest[end + 1..];
            if let Some(after) = rest.strip_prefix(',') {
                rest = after;
            } else if !rest.starts_with('}') {
                return Err("expected , or } after a label".into());
            }
        }
    }
    let rest = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let mut fields = rest.split(' ');
    let value = parse_value(fields.next().ok_or("no value")?)?;
    if let Some(timestamp) = fields.next() {
        timestamp
            .parse::<i64>()
            .map_err(|_| format!("bad timestamp {timestamp:?}"))?;
    }
    if fields.next().is_some() {
        return Err("text after the timestamp".into());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

#[test]
fn the_parser_is_strict() {
    let good = "# HELP a_total A counter.\n# TYPE a_total counter\na_total{x=\"1\"} 3\n\
                # HELP h A histogram.\n# TYPE h histogram\nh_sum 1.5\nh_count 2\n\
                h_bucket{le=\"1.0\"} 1\nh_bucket{le=\"+Inf\"} 2\n";
    let parsed = parse(good).expect("valid");
    assert_eq!(parsed.value("a_total", &[("x", "1")]), Some(3.0));
    for bad in [
        "a 1\n",                                                             // no TYPE
        "# TYPE a gauge\na{x=1} 1\n",                                        // unquoted
        "# TYPE a gauge\na 1\na 2\n",                                        // repeated series
        "# TYPE a gauge\na one\n",                                           // bad value
        "# TYPE a gauge\na 1",                                               // no final newline
        "# TYPE a gauge\n# TYPE b gauge\nb 1\na 1\n",                        // not contiguous
        "# TYPE h histogram\nh_sum 1\nh_count 2\nh_bucket{le=\"+Inf\"} 1\n", // +Inf ≠ count
        "# TYPE c counter\nc -1\n",                                          // negative counter
        "# TYPE a gauge\na{x=\"1\",x=\"2\"} 1\n",                            // label twice
    ] {
        assert!(parse(bad).is_err(), "accepted: {bad:?}");
    }
}
