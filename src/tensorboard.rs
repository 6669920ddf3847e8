//! TensorBoard event files of scalars, so that `tensorboard --logdir runs` shows every run's curves.
//!
//! Written by hand: the crates that write event files (`tensorboard-rs` and its forks) pull in a
//! protobuf code generator and an image stack for what is, for scalars, two small fixed messages. The
//! format is TFRecord framing around `tensorflow.Event` protos:
//!
//! - a record is `u64 length`, `u32 masked_crc32c(length)`, the bytes, `u32 masked_crc32c(bytes)`, all
//!   little-endian; the mask is `((crc >> 15) | (crc << 17)) + 0xa282ead8`;
//! - `Event`: `wall_time` (field 1, double), `step` (field 2, int64), `file_version` (field 3, string,
//!   the first event: `brain.Event:2`), `summary` (field 5);
//! - `Summary`: repeated `value` (field 1); `Summary.Value`: `tag` (field 1, string), `simple_value`
//!   (field 2, float).
//!
//! Tested against TensorBoard's own reader (`tests/tensorboard.rs`).

use std::io::Write;
use std::path::{Path, PathBuf};

/// An open event file. Each [`EventWriter::scalars`] call is flushed, so a killed run keeps every
/// step written so far.
pub struct EventWriter {
    file: std::fs::File,
    path: PathBuf,
}

impl EventWriter {
    /// A new event file in `dir` (created), named as TensorBoard expects:
    /// `events.out.tfevents.<seconds>.<host>.<pid>`. A resumed run adds a file; TensorBoard reads them
    /// all.
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let now = wall_time();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        let name = format!(
            "events.out.tfevents.{}.{host}.{}",
            now as u64,
            std::process::id()
        );
        let path = dir.join(name);
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)?;
        let mut w = EventWriter { file, path };
        let mut event = vec![];
        put_f64(&mut event, 1, now);
        put_bytes(&mut event, 3, b"brain.Event:2");
        w.record(&event)?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One event at `step` holding every `(tag, value)` as a scalar.
    pub fn scalars(&mut self, step: u64, values: &[(String, f64)]) -> std::io::Result<()> {
        let mut summary = vec![];
        for (tag, v) in values {
            let mut value = vec![];
            put_bytes(&mut value, 1, tag.as_bytes());
            put_f32(&mut value, 2, *v as f32);
            put_bytes(&mut summary, 1, &value);
        }
        let mut event = vec![];
        put_f64(&mut event, 1, wall_time());
        put_varint_field(&mut event, 2, step);
        put_bytes(&mut event, 5, &summary);
        self.record(&event)
    }

    fn record(&mut self, data: &[u8]) -> std::io::Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut out = Vec::with_capacity(data.len() + 16);
        out.extend_from_slice(&len);
        out.extend_from_slice(&masked_crc(&len).to_le_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(&masked_crc(data).to_le_bytes());
        self.file.write_all(&out)?;
        self.file.flush()
    }
}

/// A fresh event file in `dir` holding the scalars of every line of `metrics` (a run's
/// `metrics.jsonl`, already cut back to the checkpoint a run resumes from), after removing the event
/// files already there: a resumed run's curves have each step once.
pub fn rewrite_from(dir: &Path, metrics: &Path) -> std::io::Result<EventWriter> {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with("events.out.tfevents.")
            {
                std::fs::remove_file(e.path())?;
            }
        }
    }
    let mut w = EventWriter::create(dir)?;
    let text = std::fs::read_to_string(metrics).unwrap_or_default();
    for line in text.lines() {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
            && let Some(step) = v["step"].as_u64()
        {
            w.scalars(step, &scalars_of(&v))?;
        }
    }
    Ok(w)
}

/// The scalars of a metrics line: every number, and each number one level down in an object
/// (`format_failures/no_boxed`), except `step` itself.
pub fn scalars_of(line: &serde_json::Value) -> Vec<(String, f64)> {
    let mut out = vec![];
    let Some(obj) = line.as_object() else {
        return out;
    };
    for (k, v) in obj {
        if k == "step" {
            continue;
        }
        match v {
            serde_json::Value::Number(n) => out.extend(n.as_f64().map(|x| (k.clone(), x))),
            serde_json::Value::Object(inner) => {
                for (k2, v2) in inner {
                    if let Some(x) = v2.as_f64() {
                        out.push((format!("{k}/{k2}"), x));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

fn wall_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    put_varint(out, (field as u64) << 3);
    put_varint(out, v);
}

fn put_f64(out: &mut Vec<u8>, field: u32, v: f64) {
    put_varint(out, ((field as u64) << 3) | 1);
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_f32(out: &mut Vec<u8>, field: u32, v: f32) {
    put_varint(out, ((field as u64) << 3) | 5);
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, field: u32, v: &[u8]) {
    put_varint(out, ((field as u64) << 3) | 2);
    put_varint(out, v.len() as u64);
    out.extend_from_slice(v);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_and_varints_by_hand() {
        // CRC-32C of "123456789" is 0xe3069283 (the standard check value).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        let mut v = vec![];
        put_varint(&mut v, 300);
        assert_eq!(v, [0xac, 0x02]);
        let mut f = vec![];
        put_bytes(&mut f, 1, b"ab");
        assert_eq!(f, [0x0a, 2, b'a', b'b']);
    }

    #[test]
    fn scalars_of_a_line_flatten_one_level() {
        let line = serde_json::json!({
            "step": 3, "loss": 0.5, "states": [1, 2], "reward_variant": "dense",
            "format_failures": {"no_boxed": 2, "unclosed": 0}
        });
        let mut s = scalars_of(&line);
        s.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            s,
            [
                ("format_failures/no_boxed".to_string(), 2.0),
                ("format_failures/unclosed".to_string(), 0.0),
                ("loss".to_string(), 0.5)
            ]
        );
    }
}
