//! Run matrices: a sweep file names a base config, keys to set in every cell, a grid of keys → lists
//! of values, and seeds. [`plan`] expands it into one resolved, validated config per cell (all cells
//! are checked before any runs); `rpt sweep` then runs the cells one after another into their own run
//! directories, skipping the finished ones, and writes the report.
//!
//! ```toml
//! base = "../tiny.toml"            # relative to this file
//! out = "runs/sweeps/rewards"      # relative to where rpt runs
//! seeds = [0, 1]
//! [set]                            # every cell
//! "train.steps" = 40
//! [grid]                           # every combination
//! "reward.variant" = ["prefix_match", "dense"]
//! # A value that is a table sets several keys together; the cell is named by the entry whose key
//! # ends in the axis's name (`variant`), else by the first entry.
//! variant = [{ "reward.variant" = "dense" }, { "reward.variant" = "info_gain", "grpo.advantage" = "rlp" }]
//! ```

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::error::{Error, Result};

/// One cell: its name (also its directory under `out`) and its resolved config.
#[derive(Debug, Clone)]
pub struct Cell {
    pub name: String,
    pub config: Config,
}

/// A sweep, expanded.
#[derive(Debug, Clone)]
pub struct Plan {
    pub out: PathBuf,
    pub cells: Vec<Cell>,
}

/// The file a finished cell leaves in its run directory; a restarted sweep skips that cell.
pub const DONE: &str = "sweep-done";

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SweepFile {
    base: PathBuf,
    out: PathBuf,
    #[serde(default = "default_seeds")]
    seeds: Vec<u64>,
    #[serde(default)]
    set: toml::Table,
    #[serde(default)]
    grid: toml::Table,
}

fn default_seeds() -> Vec<u64> {
    vec![0]
}

/// Sets dotted `key` (`reward.variant`) in `t` to `v`.
fn set_key(t: &mut toml::Table, key: &str, v: toml::Value) -> std::result::Result<(), String> {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts
        .pop()
        .filter(|l| !l.is_empty())
        .ok_or("an empty key")?;
    let mut at = t;
    for p in parts {
        let next = at
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        at = next
            .as_table_mut()
            .ok_or_else(|| format!("`{p}` is not a section"))?;
    }
    at.insert(last.to_string(), v);
    Ok(())
}

/// A directory name for a value: letters, digits, `.`, `-` and `_` kept, the rest `_`.
fn slug(v: &toml::Value) -> String {
    let s = match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Reads and expands a sweep file; every cell's config is parsed and validated here, so a bad key or
/// value in any cell is refused before the first one runs.
pub fn plan(path: &Path) -> Result<Plan> {
    let bad = |m: String| Error::Run(format!("{}: {m}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let sweep: SweepFile = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let base_path = path.parent().unwrap_or(Path::new(".")).join(&sweep.base);
    let base_text = std::fs::read_to_string(&base_path)
        .map_err(|e| bad(format!("base = {:?}: {e}", sweep.base.display())))?;
    let base: toml::Table = toml::from_str(&base_text)
        .map_err(|e| bad(format!("base {}: {e}", base_path.display())))?;
    if sweep.seeds.is_empty() {
        return Err(bad("`seeds` is empty; give at least one".into()));
    }
    let mut axes: Vec<(String, Vec<toml::Value>)> = vec![];
    for (k, v) in &sweep.grid {
        let values = v
            .as_array()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| bad(format!("grid.\"{k}\" must be a non-empty list of values")))?;
        axes.push((k.clone(), values.clone()));
    }
    // Every combination, the first key slowest.
    let mut combos: Vec<Vec<(String, toml::Value)>> = vec![vec![]];
    for (k, values) in &axes {
        combos = combos
            .into_iter()
            .flat_map(|c| {
                values.iter().map(move |v| {
                    let mut c = c.clone();
                    c.push((k.clone(), v.clone()));
                    c
                })
            })
            .collect();
    }
    let mut cells = vec![];
    for combo in &combos {
        for &seed in &sweep.seeds {
            let mut parts: Vec<String> = combo
                .iter()
                .map(|(k, v)| {
                    let shown = match v {
                        // Named by the entry whose last key segment is the axis's name, else the
                        // first entry.
                        toml::Value::Table(t) => t
                            .iter()
                            .find(|(tk, _)| tk.rsplit('.').next() == Some(k.as_str()))
                            .or_else(|| t.iter().next())
                            .map_or("-".into(), |(_, tv)| slug(tv)),
                        other => slug(other),
                    };
                    format!("{}={shown}", k.rsplit('.').next().unwrap_or(k))
                })
                .collect();
            parts.push(format!("seed={seed}"));
            let name = parts.join("_");
            let mut t = base.clone();
            let settings = sweep
                .set
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .chain(combo.iter().flat_map(|(k, v)| match v {
                    toml::Value::Table(t) => {
                        t.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
                    }
                    other => vec![(k.clone(), other.clone())],
                }))
                .chain([
                    ("seed".to_string(), toml::Value::Integer(seed as i64)),
                    (
                        "run_dir".to_string(),
                        toml::Value::String(sweep.out.join(&name).display().to_string()),
                    ),
                ]);
            for (k, v) in settings {
                set_key(&mut t, &k, v).map_err(|e| bad(format!("cell {name}: key {k:?}: {e}")))?;
            }
            let resolved = toml::to_string(&t).expect("a table serialises");
            let config = Config::parse(&resolved, &path.join(&name))
                .map_err(|e| bad(format!("cell {name}: {e}")))?;
            cells.push(Cell { name, config });
        }
    }
    Ok(Plan {
        out: sweep.out,
        cells,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn a_grid_expands_to_every_cell_with_its_keys_and_seed() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "base.toml", "[train]\nsteps = 9\n");
        let p = write(
            dir.path(),
            "s.toml",
            "base = \"base.toml\"\nout = \"o\"\nseeds = [3, 4]\n[set]\n\"train.steps\" = 2\n[grid]\n\"reward.variant\" = [\"dense\", \"first_token\"]\n\"optim.lr\" = [0.001]\n",
        );
        let linked = write(
            dir.path(),
            "l.toml",
            "base = \"base.toml\"\nout = \"o\"\n[grid]\nvariant = [{ \"reward.variant\" = \"dense\" }, { \"reward.variant\" = \"info_gain\", \"grpo.advantage\" = \"rlp\" }]\n",
        );
        let plan = plan(&p).unwrap();
        let names: Vec<&str> = plan.cells.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "lr=0.001_variant=dense_seed=3",
                "lr=0.001_variant=dense_seed=4",
                "lr=0.001_variant=first_token_seed=3",
                "lr=0.001_variant=first_token_seed=4"
            ]
        );
        let c = &plan.cells[2].config;
        assert_eq!(
            (c.reward.variant.as_str(), c.seed, c.train.steps, c.optim.lr),
            ("first_token", 3, 2, 0.001)
        );
        assert_eq!(
            c.run_dir,
            Path::new("o").join("lr=0.001_variant=first_token_seed=3")
        );
        let linked = super::plan(&linked).unwrap();
        let names: Vec<&str> = linked.cells.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["variant=dense_seed=0", "variant=info_gain_seed=0"]);
        let c = &linked.cells[1].config;
        assert_eq!(c.reward.variant, "info_gain");
        assert_eq!(c.grpo.advantage, crate::config::Advantage::Rlp);
        assert_eq!(
            linked.cells[0].config.grpo.advantage,
            crate::config::Advantage::Grpo
        );
    }

    #[test]
    fn a_bad_key_or_value_in_any_cell_is_refused_up_front() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "base.toml", "");
        let cases = [
            ("[grid]\n\"reward.variantt\" = [\"dense\"]\n", "variantt"),
            ("[grid]\n\"rollout.group_size\" = [8, 1]\n", "group_size=1"),
            ("[grid]\n\"reward.variant\" = []\n", "non-empty list"),
            ("seeds = []\n", "seeds"),
            ("[set]\n\"train.steps\" = \"many\"\n", "steps"),
        ];
        for (extra, says) in cases {
            let p = write(
                dir.path(),
                "s.toml",
                &format!("base = \"base.toml\"\nout = \"o\"\n{extra}"),
            );
            let e = plan(&p).unwrap_err().to_string();
            assert!(e.contains("s.toml") && e.contains(says), "{extra}: {e}");
        }
        let p = write(dir.path(), "s.toml", "base = \"nope.toml\"\nout = \"o\"\n");
        assert!(plan(&p).unwrap_err().to_string().contains("nope.toml"));
    }
}
