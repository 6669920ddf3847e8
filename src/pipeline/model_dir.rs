//! The directories `rpt` writes models into (`rpt bootstrap`, `rpt init`): what may be replaced, how a
//! model is put in place whole, and whether a built-in model found there was built from the config's
//! `[corpus]` and `[bootstrap]` settings.

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::Config;
use crate::error::Result;

/// The files a bootstrap writes; a directory holding only these (and `bootstrap.json`) is an earlier
/// built-in model, which a new bootstrap may replace.
const BOOTSTRAP_FILES: &[&str] = &[
    "config.json",
    "tokenizer.json",
    "model.safetensors",
    "bootstrap.json",
];

/// Refuses a target directory that holds anything but an earlier built-in model: bootstrap never writes
/// over a user's weights, tokenizer or any other file. The error names what is there.
pub fn check_target(out: &Path) -> Result<()> {
    if !out.exists() {
        return Ok(());
    }
    if !out.is_dir() {
        return Err(crate::Error::Run(format!(
            "{}: is a file; bootstrap writes a model directory there (choose a new directory)",
            out.display()
        )));
    }
    let mut names: Vec<String> = std::fs::read_dir(out)
        .map_err(|e| crate::Error::io(out, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let ours = names.iter().all(|n| BOOTSTRAP_FILES.contains(&n.as_str()))
        && names.iter().any(|n| n == "bootstrap.json");
    if names.is_empty() || ours {
        return Ok(());
    }
    let hint = if names.iter().any(|n| n == "config.json") {
        ""
    } else {
        " If these are your model's files, add its config.json and it will be loaded, not built."
    };
    Err(crate::Error::Run(format!(
        "{}: holds {} and was not made by `rpt bootstrap` (no bootstrap.json); bootstrap writes the \
         built-in model only into a new or empty directory, or over one it built before. Point \
         `model.path` (or `--out`) at another directory.{hint}",
        out.display(),
        names.join(", ")
    )))
}

/// Refuses `out` unless a new model directory may go there: new, empty, or (with `replace_builtin`) an
/// earlier built-in model ([`check_target`]).
pub(super) fn check_new_model_dir(out: &Path, replace_builtin: bool) -> Result<()> {
    check_target(out)?;
    if !replace_builtin && out.join("bootstrap.json").exists() {
        return Err(crate::Error::Run(format!(
            "{}: holds a built-in model; only a new or empty directory is written here",
            out.display()
        )));
    }
    Ok(())
}

/// Writes a model directory with `write` into the sibling `OUT.partial`, then puts it in place of
/// `out`, checked again first (something may have been written there meanwhile), so that `out` never
/// holds half a model and never anyone else's files.
pub(super) fn write_model_dir<T>(
    out: &Path,
    replace_builtin: bool,
    write: impl FnOnce(&Path) -> Result<T>,
) -> Result<T> {
    let name = out
        .file_name()
        .ok_or_else(|| crate::Error::Run(format!("{}: not a directory name", out.display())))?;
    let tmp = out.with_file_name(format!("{}.partial", name.to_string_lossy()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| crate::Error::io(&tmp, e))?;
    }
    let written = write(&tmp)?;
    check_new_model_dir(out, replace_builtin)?;
    if out.exists() {
        // As checked: empty, or an earlier built-in model's own files.
        std::fs::remove_dir_all(out).map_err(|e| crate::Error::io(out, e))?;
    }
    std::fs::rename(&tmp, out).map_err(|e| crate::Error::io(out, e))?;
    Ok(written)
}

/// What a bootstrap's result depends on, beyond the seed: the `[corpus]` and `[bootstrap]` keys, dotted
/// as a resumed run's config is compared (`super::checks::flatten`), and which thoughts the corpus's
/// solver writes ([`crate::env::SOLVER`]). (The seed is left out: a sweep's seeds share one built-in
/// model.)
pub fn settings(cfg: &Config) -> BTreeMap<String, String> {
    let mut keys = super::checks::flatten(cfg);
    keys.retain(|k, _| k.starts_with("corpus.") || k.starts_with("bootstrap."));
    keys.insert(
        "solver".into(),
        toml::Value::String(crate::env::SOLVER.into()).to_string(),
    );
    keys
}

/// Refuses the built-in model in `dir` when it was built from other `[corpus]` or `[bootstrap]`
/// settings than `cfg`'s, naming the first key that differs, or by an earlier `rpt` that did not
/// record them. A directory without `bootstrap.json` is not a built-in model and is not checked.
pub fn check_settings(cfg: &Config, dir: &Path) -> Result<()> {
    let path = dir.join("bootstrap.json");
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(&path).map_err(|e| crate::Error::io(&path, e))?;
    let recorded: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| crate::Error::Run(format!("{}: not JSON ({e})", path.display())))?;
    let rebuild = format!(
        "remove {} to have it built again, or point `model.path` at another directory",
        dir.display()
    );
    let Some(built) = recorded
        .get("settings")
        .and_then(|v| serde_json::from_value::<BTreeMap<String, String>>(v.clone()).ok())
    else {
        return Err(crate::Error::Run(format!(
            "{}: this built-in model was made by an earlier rpt that did not record its [corpus] \
             and [bootstrap] settings, so it may not be the model this config describes; {rebuild}",
            path.display()
        )));
    };
    let want = settings(cfg);
    let none = || "none".to_string();
    if let Some(key) = built
        .keys()
        .chain(want.keys())
        .filter(|k| built.get(*k) != want.get(*k))
        .min()
    {
        return Err(crate::Error::Run(format!(
            "{}: this built-in model was built with {key} = {}, and the config asks for {}; \
             {rebuild}",
            path.display(),
            built.get(key).cloned().unwrap_or_else(none),
            want.get(key).cloned().unwrap_or_else(none)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_report(dir: &Path, settings: Option<BTreeMap<String, String>>) {
        let mut report = serde_json::json!({"parameters": 1});
        if let Some(s) = settings {
            report["settings"] = serde_json::json!(s);
        }
        std::fs::write(dir.join("bootstrap.json"), report.to_string()).unwrap();
    }

    #[test]
    fn a_built_in_model_from_other_settings_is_refused_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::default();
        // Not a built-in model: nothing to check.
        check_settings(&cfg, dir.path()).unwrap();
        write_report(dir.path(), Some(settings(&cfg)));
        check_settings(&cfg, dir.path()).unwrap();

        let mut other = cfg.clone();
        other.bootstrap.split_digits = !cfg.bootstrap.split_digits;
        let e = check_settings(&other, dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("bootstrap.split_digits = true") && e.contains("asks for false"),
            "{e}"
        );
        assert!(
            e.contains("bootstrap.json") && e.contains("model.path"),
            "{e}"
        );
        other = cfg.clone();
        other.corpus.documents += 1;
        let e = check_settings(&other, dir.path()).unwrap_err().to_string();
        assert!(e.contains("corpus.documents"), "{e}");
        // The seed is not a bootstrap setting: a sweep's seeds share one model.
        other = cfg.clone();
        other.seed += 1;
        check_settings(&other, dir.path()).unwrap();

        // A model taught by another solver.
        let mut older = settings(&cfg);
        older.insert("solver".into(), "\"X op Y = Z only\"".into());
        write_report(dir.path(), Some(older));
        let e = check_settings(&cfg, dir.path()).unwrap_err().to_string();
        assert!(e.contains("solver = \"X op Y = Z only\""), "{e}");

        write_report(dir.path(), None);
        let e = check_settings(&cfg, dir.path()).unwrap_err().to_string();
        assert!(e.contains("earlier rpt") && e.contains("remove"), "{e}");
    }
}
