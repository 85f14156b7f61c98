//! Reading the bridge's metrics back from their text (what `/metrics` serves, `Metrics::encode`):
//! one small parser for every figure `fondo-bridge top` and the benchmark harness take from it.
//! It reads the sample lines only (name, labels, value); `# HELP`, `# TYPE` and `# EOF` are not
//! needed to find a figure whose name the caller knows.

/// One sample line: `name{label="value",...} value [timestamp]`.
#[derive(Debug, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    pub labels: Vec<(&'a str, String)>,
    pub value: f64,
}

impl Sample<'_> {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Every sample of `text`. Comments (`# HELP`, `# TYPE`, `# EOF`) and lines that do not parse
/// are skipped.
pub fn samples(text: &str) -> impl Iterator<Item = Sample<'_>> {
    text.lines().filter_map(sample)
}

/// The buckets of histogram `family` as `(le, cumulative count)` pairs, summed over its series
/// whose labels include every pair of `with` (all series when `with` is empty).
pub fn histogram(text: &str, family: &str, with: &[(&str, &str)]) -> Vec<(f64, f64)> {
    let bucket = format!("{family}_bucket");
    let mut by_le: Vec<(f64, f64)> = Vec::new();
    let wanted = samples(text)
        .filter(|s| s.name == bucket && with.iter().all(|(k, v)| s.label(k) == Some(*v)));
    for s in wanted {
        let Some(le) = s.label("le").and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        match by_le.iter_mut().find(|(b, _)| *b == le) {
            Some((_, n)) => *n += s.value,
            None => by_le.push((le, s.value)),
        }
    }
    by_le
}

fn sample(line: &str) -> Option<Sample<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let (name, mut rest) = line.split_at(name_end);
    let mut labels = Vec::new();
    if let Some(inside) = rest.strip_prefix('{') {
        (labels, rest) = parse_labels(inside)?;
    }
    // `+Inf`, `-Inf` and `NaN` parse as f64 too.
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// `a="x",b="y\"z"} rest` → the labels, unescaped, and ` rest`.
fn parse_labels(mut s: &str) -> Option<(Vec<(&str, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, after) = s.split_once('=')?;
        s = after.trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key.trim(), value));
        s = &s[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP fondo_bridge_x_seconds Latency.\n\
        # TYPE fondo_bridge_x_seconds histogram\n\
        fondo_bridge_x_seconds_sum{source=\"websocket\"} 0.15\n\
        fondo_bridge_x_seconds_count{source=\"websocket\"} 100\n\
        fondo_bridge_x_seconds_bucket{le=\"0.001\",source=\"websocket\"} 50\n\
        fondo_bridge_x_seconds_bucket{source=\"websocket\",le=\"0.002\"} 100\n\
        fondo_bridge_x_seconds_bucket{source=\"websocket\",le=\"+Inf\"} 100\n\
        fondo_bridge_x_seconds_bucket{source=\"webhook\",le=\"0.001\"} 7\n\
        fondo_bridge_x_seconds_bucket{source=\"webhook\",le=\"0.002\"} 7\n\
        fondo_bridge_x_seconds_bucket{source=\"webhook\",le=\"+Inf\"} 8\n\
        fondo_bridge_received_total 42 1700000000000\n\
        # EOF\n";

    #[test]
    fn samples_with_and_without_labels() {
        let all: Vec<Sample<'_>> = samples(TEXT).collect();
        assert_eq!(all.len(), 9);
        let total = all.last().unwrap();
        assert_eq!(
            (total.name, total.value),
            ("fondo_bridge_received_total", 42.0)
        );
        assert!(total.labels.is_empty());
        assert_eq!(all[0].label("source"), Some("websocket"));
        assert_eq!(all[4].label("le"), Some("+Inf"));
    }

    #[test]
    fn escaped_label_values() {
        let s = sample(r#"m{path="C:\\DIR",msg="say \"hi\"\n", x = "1" } 2.5e3"#).unwrap();
        assert_eq!(s.label("path"), Some(r"C:\DIR"));
        assert_eq!(s.label("msg"), Some("say \"hi\"\n"));
        assert_eq!(s.label("x"), Some("1"));
        assert_eq!(s.value, 2500.0);
        assert_eq!(sample("m{a=\"unterminated} 1"), None);
    }

    #[test]
    fn histogram_of_one_series_or_all() {
        let mut ws = histogram(TEXT, "fondo_bridge_x_seconds", &[("source", "websocket")]);
        ws.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert_eq!(
            ws,
            vec![(0.001, 50.0), (0.002, 100.0), (f64::INFINITY, 100.0)]
        );
        let mut all = histogram(TEXT, "fondo_bridge_x_seconds", &[]);
        all.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert_eq!(
            all,
            vec![(0.001, 57.0), (0.002, 107.0), (f64::INFINITY, 108.0)]
        );
        assert!(histogram(TEXT, "fondo_bridge_y_seconds", &[]).is_empty());
    }
}
