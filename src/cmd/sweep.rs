//! `rpt sweep FILE.toml`: every cell of a run matrix (`rpt::pipeline::sweep`), one after another, each
//! into its own run directory, then one report over them all. A restarted sweep skips the cells that
//! finished and resumes a cell that was interrupted from its last checkpoint.

use std::path::PathBuf;

use anyhow::{Context, Result};
use rpt::pipeline::sweep::{DONE, plan};

#[derive(clap::Args, Debug)]
pub struct SweepArgs {
    /// The sweep file (base config, `[set]`, `[grid]`, seeds, `out`).
    pub file: PathBuf,
    /// Stop after this many cells have run in this invocation (the rest on the next one).
    #[arg(long)]
    pub max_cells: Option<usize>,
}

pub fn run(a: &SweepArgs) -> Result<()> {
    let plan = plan(&a.file)?;
    std::fs::create_dir_all(&plan.out)
        .with_context(|| format!("creating {}", plan.out.display()))?;
    let n = plan.cells.len();
    println!(
        "sweep {}: {n} cells into {}",
        a.file.display(),
        plan.out.display()
    );
    let mut ran = 0;
    for (i, cell) in plan.cells.iter().enumerate() {
        let dir = &cell.config.run_dir;
        if dir.join(DONE).exists() {
            println!("[{}/{n}] {}: done already", i + 1, cell.name);
            continue;
        }
        if a.max_cells.is_some_and(|m| ran >= m) {
            println!(
                "stopping after {ran} cell(s) (--max-cells); run the sweep again for the rest"
            );
            return Ok(());
        }
        let resume = rpt::checkpoint::latest(dir)?.is_some();
        println!(
            "[{}/{n}] {}{}",
            i + 1,
            cell.name,
            if resume { " (resuming)" } else { "" }
        );
        let path = plan.out.join(format!("{}.toml", cell.name));
        let text = toml::to_string_pretty(&cell.config).expect("a config serialises");
        rpt::model::write_atomic(&path, text.as_bytes())?;
        super::train::run(&super::train::TrainArgs {
            config: Some(path),
            resume,
            steps: None,
            run_dir: None,
            allow_config_change: false,
            flops_of: None,
        })
        .map_err(|e| {
            let cell = &cell.name;
            if e.is::<super::train::Stopped>() {
                e.context(format!(
                    "sweep cell {cell} (run the sweep again: it resumes this cell, which is not \
                     marked done)"
                ))
            } else {
                e.context(format!("sweep cell {cell}"))
            }
        })?;
        rpt::model::write_atomic(&dir.join(DONE), b"")?;
        ran += 1;
    }
    let dirs: Vec<PathBuf> = plan
        .cells
        .iter()
        .map(|c| c.config.run_dir.clone())
        .collect();
    let s = rpt::report::report(&dirs, &plan.out.join("report"))?;
    println!("report: {}", s.html.display());
    Ok(())
}
