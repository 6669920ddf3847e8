//! `rpt report RUN_DIR... [--out DIR]`: curves, held-out accuracy and sampled completions of one or
//! more runs on one self-contained HTML page, each figure also as PNG and SVG.

use std::path::PathBuf;

use anyhow::Result;

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Run directories (each with a metrics.jsonl).
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Where to write report.html and figures/ (default: RUN_DIR/report for one run, else ./report).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: &ReportArgs) -> Result<()> {
    let out = a.out.clone().unwrap_or_else(|| match a.runs.as_slice() {
        [one] => one.join("report"),
        _ => PathBuf::from("report"),
    });
    let s = rpt::report::report(&a.runs, &out)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!(
            "report of {} run(s) in {} series: {} ({} figure files)",
            s.runs,
            s.series,
            s.html.display(),
            s.figures.len()
        );
        for w in &s.warnings {
            println!("warning: {w}");
        }
    }
    Ok(())
}
