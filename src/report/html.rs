//! The report page: one HTML file with its CSS inline and its figures as files beside it, so it opens
//! with no network.

use super::figures::{Drawn, SPLITS};
use super::{Series, eval_score};

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn pct(v: Option<(f64, f64)>) -> String {
    match v {
        Some((m, se)) => format!("{:.1} ± {:.1}", 100.0 * m, 100.0 * se),
        None => "–".into(),
    }
}

/// Mean of `key` over the last tenth of a series' steps (at least one), over its runs, with the
/// standard error of that mean over the steps and runs it averages.
fn late_mean(s: &Series, key: &str) -> Option<(f64, f64)> {
    let mut vals = vec![];
    for r in &s.runs {
        let n = r.metrics.len();
        let tail = (n / 10).max(1);
        vals.extend(
            r.metrics[n - tail..]
                .iter()
                .filter_map(|m| m.get(key)?.as_f64()),
        );
    }
    if vals.is_empty() {
        return None;
    }
    let k = vals.len() as f64;
    let mean = vals.iter().sum::<f64>() / k;
    let var = vals.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (k - 1.0).max(1.0);
    Some((mean, (var / k).sqrt()))
}

fn figure(stem: &str, title: &str, png: bool) -> String {
    let png_link = if png {
        format!(r#" · <a href="figures/{stem}.png">PNG</a>"#)
    } else {
        String::new()
    };
    format!(
        r#"<figure><img src="figures/{stem}.svg" alt="{t}"><figcaption>{t} · <a href="figures/{stem}.svg">SVG</a>{png_link}</figcaption></figure>"#,
        t = esc(title)
    )
}

pub fn page(series: &[Series], drawn: &Drawn, warnings: &[String]) -> String {
    let mut h = String::from(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>rpt report</title>
<style>
body{font-family:sans-serif;margin:24px;max-width:1600px;color:#222}
table{border-collapse:collapse;margin:8px 0 20px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}
figure{display:inline-block;margin:6px;vertical-align:top}figure img{width:560px;border:1px solid #eee}
figcaption{font-size:12px;color:#555;max-width:560px}
.sample{border:1px solid #ddd;margin:6px 0;padding:6px;font-size:13px}.sample pre{white-space:pre-wrap;margin:2px 0}
.warn{color:#a40}
</style></head><body>
<h1>rpt report</h1>
"#,
    );
    h.push_str("<h2>Runs</h2><table><tr><th class=l>series</th><th class=l>run directories (seeds)</th></tr>");
    for s in series {
        let dirs: Vec<String> = s
            .runs
            .iter()
            .map(|r| {
                let seed = r.config.get("seed").map_or("?", |v| v.as_str());
                format!("{} (seed {seed})", esc(&r.dir.display().to_string()))
            })
            .collect();
        h.push_str(&format!(
            "<tr><td class=l>{}</td><td class=l>{}</td></tr>",
            esc(&s.label),
            dirs.join("<br>")
        ));
    }
    h.push_str("</table>");
    if !warnings.is_empty() {
        h.push_str("<h2>Warnings</h2><ul>");
        for w in warnings {
            h.push_str(&format!("<li class=warn>{}</li>", esc(w)));
        }
        h.push_str("</ul>");
    }

    h.push_str("<h2>Final numbers</h2><p>Training: the mean over each run's last tenth of steps, ± the standard error of that mean. Held-out: accuracy in %, ± √(p(1−p)/n) (for several seeds, the mean and the standard error of the mean).</p>");
    // Held-out columns where some run was evaluated (`rpt train` writes eval.json).
    let evaluated = series
        .iter()
        .flat_map(|s| &s.runs)
        .any(|r| r.eval.is_some());
    let splits: &[&str] = if evaluated { SPLITS } else { &[] };
    h.push_str("<table><tr><th class=l>series</th><th>runs</th><th>steps</th><th>reward</th><th>accuracy (train)</th>");
    for split in splits {
        h.push_str(&format!(
            "<th>{split}: standard, before → after</th><th>{split}: reasoning, before → after</th>"
        ));
    }
    h.push_str("</tr>");
    for s in series {
        let steps = s.runs.iter().map(|r| r.metrics.len()).max().unwrap_or(0);
        let f = |v: Option<(f64, f64)>| match v {
            Some((m, se)) => format!("{m:.3} ± {se:.3}"),
            None => "–".into(),
        };
        h.push_str(&format!(
            "<tr><td class=l>{}</td><td>{}</td><td>{steps}</td><td>{}</td><td>{}</td>",
            esc(&s.label),
            s.runs.len(),
            f(late_mean(s, "reward_mean")),
            f(late_mean(s, "accuracy")),
        ));
        for split in splits {
            for mode in ["standard", "reasoning"] {
                h.push_str(&format!(
                    "<td>{} → {}</td>",
                    pct(eval_score(s, "before", split, mode)),
                    pct(eval_score(s, "after", split, mode))
                ));
            }
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");

    if !drawn.bars.is_empty() {
        h.push_str("<h2>Held-out accuracy</h2>");
        for (title, stem) in &drawn.bars {
            h.push_str(&figure(stem, title, drawn.png));
        }
    }
    if !drawn.compute.is_empty() {
        h.push_str("<h2>Held-out accuracy against training compute</h2><p>Every checkpoint that <code>rpt eval --run</code> measured, against the run's cumulative model FLOPs; dashed, the fit <code>accuracy = a − b·C<sup>−α</sup></code> over the checkpoints (not the starting model), with its R² in the legend.</p>");
        for (title, stem) in &drawn.compute {
            h.push_str(&figure(stem, title, drawn.png));
        }
    }
    h.push_str("<h2>Curves</h2>");
    for (title, stem) in &drawn.curves {
        h.push_str(&figure(stem, title, drawn.png));
    }

    h.push_str("<h2>Sampled completions</h2><p>A seeded few per step (<code>samples.jsonl</code>), from the first and the last steps of each run.</p>");
    for s in series {
        for r in &s.runs {
            if r.samples.is_empty() {
                continue;
            }
            h.push_str(&format!("<h3>{}</h3>", esc(&r.dir.display().to_string())));
            let n = r.samples.len();
            let picks: Vec<&serde_json::Value> = if n <= 4 {
                r.samples.iter().collect()
            } else {
                [0, 1, n - 2, n - 1]
                    .iter()
                    .map(|&i| &r.samples[i])
                    .collect()
            };
            for x in picks {
                let t = |k: &str| esc(x[k].as_str().unwrap_or(""));
                h.push_str(&format!(
                    "<div class=sample><b>step {}</b>, state {}, reward {} ({})<pre>…{}<b>⟨thought⟩</b>{}<b>⟨answer⟩</b>{}</pre>true continuation: <code>{}</code></div>",
                    x["step"],
                    x["state"],
                    x["reward"],
                    if x["correct"].as_bool() == Some(true) { "correct".into() } else { x["format"].as_str().unwrap_or("wrong").to_string() },
                    t("context_tail"),
                    t("thought"),
                    t("answer"),
                    t("continuation"),
                ));
            }
        }
    }
    h.push_str("</body></html>\n");
    h
}
