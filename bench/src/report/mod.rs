//! What a run leaves behind: `results.json` (every row and the environment), the Markdown report,
//! or only the rows (`--rows-out`, for a parent run).

mod markdown;

use serde_json::json;

use crate::args::Args;
use crate::environment::Env;
use crate::row::Row;

pub fn write(a: &Args, env: &Env, rows: &[Row]) -> anyhow::Result<()> {
    if let Some(path) = &a.rows_out {
        std::fs::write(path, serde_json::to_vec(rows)?)?;
        return Ok(());
    }
    if a.no_write {
        return Ok(());
    }
    if let Some(d) = a.out_json.parent() {
        std::fs::create_dir_all(d)?;
    }
    let json = serde_json::to_string_pretty(&json!({"environment": env, "results": rows}))?;
    std::fs::write(&a.out_json, json + "\n")?;
    if let Some(d) = a.out_md.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(&a.out_md, markdown::markdown(env, rows, a))?;
    eprintln!("wrote {} and {}", a.out_json.display(), a.out_md.display());
    Ok(())
}

/// A figure with 2, 1 or no decimals as it grows; `–` for none.
fn f(v: Option<f64>) -> String {
    v.map(|x| {
        if x >= 100.0 {
            format!("{x:.0}")
        } else if x >= 10.0 {
            format!("{x:.1}")
        } else {
            format!("{x:.2}")
        }
    })
    .unwrap_or_else(|| "–".into())
}

/// `p50 / p99 / p99.9` of a row, in ms.
pub fn lat(r: &Row) -> String {
    format!("{} / {} / {}", f(r.p50_ms), f(r.p99_ms), f(r.p999_ms))
}

/// The last cells of a bridge row: SUT CPU s (cores/10k) | peak RSS MB | verified (count).
fn cpu_rss_verified(r: &Row) -> String {
    format!(
        "{:.2} ({:.2}) | {:.0} | {} ({})",
        r.cpu_s_sut,
        r.sut_cores_per_10k,
        r.peak_rss_mb,
        ok(r),
        r.broker_count.map(|c| c.to_string()).unwrap_or_default()
    )
}

fn ok(r: &Row) -> &'static str {
    match r.verified {
        Some(true) => "yes",
        Some(false) => "**NO**",
        None => "–",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_and_verdicts() {
        assert_eq!(f(Some(123.4)), "123");
        assert_eq!(f(Some(12.34)), "12.3");
        assert_eq!(f(Some(1.234)), "1.23");
        assert_eq!(f(None), "–");
        let r = Row {
            p50_ms: Some(0.5),
            p99_ms: Some(2.0),
            verified: Some(false),
            ..Row::default()
        };
        assert_eq!(lat(&r), "0.50 / 2.00 / –");
        assert_eq!(ok(&r), "**NO**");
    }
}
