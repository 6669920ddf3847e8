//! `rpt bench --work decode`: decoding speed beside the memory-bandwidth bound. A decode step of a
//! batch reads every weight once (the embedding table only through the head, when it is tied; an
//! untied table only at the batch's rows), so no decoder can make more than
//! `batch × bandwidth ÷ weight bytes` tokens a second. The bandwidth is measured here, by summing a
//! buffer as large as the weights (at least 1 GiB, far beyond the caches) on every thread of the pool
//! the model runs on; it is what a read-only stream reaches on this machine, not a datasheet figure.
//! Each of `--repeat` rounds times the decode, then takes the best of two passes over that buffer
//! right after it: `bound_over_measured` sets the median step against the best bandwidth of all
//! rounds (the strictest bound), and `bound_over_measured_paired` is the median of each round's step
//! against its own round's bandwidth (a shared machine's bandwidth drifts by tens of percent from one
//! minute to the next).
//!
//! A step also does `2 × batch` floating-point operations per weight, and at a batch of eight that
//! can take longer than reading the weights. Beside the bandwidth bound the bench prints the
//! multiply-add bound: the step's operations over the peak rate measured here (`FmaProbe`:
//! independent fused multiply-adds in registers on every thread, the widest vectors the CPU has), so
//! that a step's time can be set against whichever of the two bounds is the larger.

use std::time::Instant;

use anyhow::Result;
use rpt::model::{ModelConfig, SampleParams, generate, init_weights};

use super::{BenchArgs, median, random_ids, shape};

/// Bytes a decode step reads of `weights`: all of them, but an untied embedding table only at the
/// batch's rows (counted as none).
pub fn decode_weight_bytes(cfg: &ModelConfig, weights: &rpt::model::TensorMap) -> usize {
    let layout = rpt::model::Layout::of(cfg);
    weights
        .iter()
        .filter(|(k, _)| layout.tied() || **k != layout.embed)
        .map(|(_, t)| t.elem_count() * t.dtype().size_in_bytes())
        .sum()
}

/// A buffer of `bytes` (at least 1 GiB) to measure read bandwidth on.
pub struct BandwidthProbe(Vec<f32>);

impl BandwidthProbe {
    pub fn new(bytes: usize) -> Self {
        use rayon::prelude::*;
        let n = bytes.max(1 << 30) / 4;
        BandwidthProbe((0..n).into_par_iter().map(|i| (i % 7) as f32).collect())
    }

    /// Read bandwidth in bytes a second: the best of `passes` parallel sums over the buffer.
    pub fn measure(&self, passes: usize) -> f64 {
        use rayon::prelude::*;
        let mut best = 0f64;
        for _ in 0..passes {
            let t0 = Instant::now();
            let s: f32 = self
                .0
                .par_chunks(1 << 16)
                .map(|c| {
                    // Eight sums side by side, so the adds keep up with the loads.
                    let mut acc = [0f32; 8];
                    for x in c.chunks_exact(8) {
                        for k in 0..8 {
                            acc[k] += x[k];
                        }
                    }
                    acc.iter().sum::<f32>()
                })
                .sum();
            let dt = t0.elapsed().as_secs_f64();
            std::hint::black_box(s);
            best = best.max((self.0.len() * 4) as f64 / dt);
        }
        best
    }
}

/// A measure of the peak rate of single-precision multiply-adds: chains of fused multiply-adds in
/// registers, independent of each other and of memory, on every thread of the pool at once.
pub struct FmaProbe;

impl FmaProbe {
    /// Rounds of the twelve chains each thread runs per timing.
    const ROUNDS: usize = 4_000_000;

    /// Floating-point operations a second (a multiply-add counts two): the best of `passes` timings.
    pub fn measure(passes: usize) -> f64 {
        use rayon::prelude::*;
        let threads = rayon::current_num_threads();
        let mut best = 0f64;
        for _ in 0..passes {
            let t0 = Instant::now();
            let flops: f64 = (0..threads)
                .into_par_iter()
                .map(|_| Self::chains(Self::ROUNDS))
                .sum();
            best = best.max(flops / t0.elapsed().as_secs_f64());
        }
        best
    }

    /// Runs twelve independent chains of `rounds` multiply-adds on the widest vectors the CPU has;
    /// returns the floating-point operations done.
    fn chains(rounds: usize) -> f64 {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has the feature the function is compiled for.
                return unsafe { Self::chains_avx512(rounds) };
            }
            if std::arch::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU has the features the function is compiled for.
                return unsafe { Self::chains_fma(rounds) };
            }
        }
        let mut acc = [1f32; 12];
        for _ in 0..rounds {
            for a in &mut acc {
                *a = a.mul_add(0.999_999, 1e-7);
            }
        }
        std::hint::black_box(acc);
        (rounds * 12 * 2) as f64
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn chains_avx512(rounds: usize) -> f64 {
        use std::arch::x86_64::*;
        let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        let mut acc = [_mm512_set1_ps(1.0); 12];
        for _ in 0..rounds {
            for r in &mut acc {
                *r = _mm512_fmadd_ps(*r, a, b);
            }
        }
        std::hint::black_box(acc);
        (rounds * 12 * 16 * 2) as f64
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx,fma")]
    unsafe fn chains_fma(rounds: usize) -> f64 {
        use std::arch::x86_64::*;
        let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        let mut acc = [_mm256_set1_ps(1.0); 12];
        for _ in 0..rounds {
            for r in &mut acc {
                *r = _mm256_fmadd_ps(*r, a, b);
            }
        }
        std::hint::black_box(acc);
        (rounds * 12 * 8 * 2) as f64
    }
}

/// Decoding tokens a second at `--batch` (seconds of `--new` tokens less those of one, over the
/// steps between), beside the bandwidth bound (see the module doc).
pub(super) fn decode(a: &BenchArgs) -> Result<()> {
    anyhow::ensure!(
        a.new >= 2,
        "--new must be at least 2 for --work decode, got {}",
        a.new
    );
    let device = crate::cmd::device()?;
    let models: Vec<(String, ModelConfig, rpt::model::TensorMap)> = match &a.model {
        Some(dir) => {
            let ck = crate::cmd::load_checkpoint(dir)?;
            vec![(dir.display().to_string(), ck.config, ck.weights)]
        }
        None => {
            let names = if a.shape == "all" {
                vec!["small", "big"]
            } else {
                vec![a.shape.as_str()]
            };
            names
                .into_iter()
                .map(|n| {
                    let cfg = shape(n)?;
                    let w = init_weights(&cfg, 0, 0.02, &device)?;
                    Ok((n.to_string(), cfg, w))
                })
                .collect::<Result<_>>()?
        }
    };
    let threads = rayon::current_num_threads();
    // The machine's, not a model's: measured once for all of them.
    let peak = FmaProbe::measure(3);
    for (name, cfg, weights) in models {
        let dtype = rpt::model::Route::for_device(&device).policy_dtype;
        let policy = weights
            .into_iter()
            .map(|(k, t)| Ok((k, t.to_dtype(dtype)?)))
            .collect::<Result<rpt::model::TensorMap>>()?;
        let bytes = decode_weight_bytes(&cfg, &policy);
        // Two operations (a multiply-add) per weight read and row of the batch.
        let flops = 2.0 * a.batch as f64 * (bytes / dtype.size_in_bytes()) as f64;
        let model = rpt::model::Decoder::new(&cfg, &policy)?;
        drop(policy);
        let prompts: Vec<Vec<u32>> = (0..a.batch)
            .map(|i| random_ids(a.prompt, cfg.vocab_size, i as u64))
            .collect();
        let seeds: Vec<u64> = (0..a.batch as u64).collect();
        let run = |new: usize| -> Result<f64> {
            let params = SampleParams {
                temperature: 0.8,
                top_k: 0,
                top_p: 1.0,
                max_new_tokens: new,
            };
            let t0 = Instant::now();
            generate(&model, &prompts, &params, &seeds, &[], &|_, _| false)?;
            Ok(t0.elapsed().as_secs_f64())
        };
        // The fastest of up to five timings of `new` tokens, as many as fit in 0.2 s after the first:
        // one for a real model, where a generation takes longer; on a tiny one, where the steps
        // between take microseconds, a single timing's noise can exceed them.
        let fastest = |new: usize| -> Result<f64> {
            let mut best = run(new)?;
            let mut spent = best;
            for _ in 1..5 {
                if spent >= 0.2 {
                    break;
                }
                let t = run(new)?;
                (best, spent) = (best.min(t), spent + t);
            }
            Ok(best)
        };
        run(a.new)?;
        run(1)?;
        // Each repeat times `--new` tokens and one token, then measures the bandwidth right after, so
        // that a step and its bound come from the same moment of a machine whose bandwidth drifts.
        let probe = BandwidthProbe::new(bytes);
        let (mut steps, mut bws) = (vec![], vec![]);
        for _ in 0..a.repeat {
            let per_step = (fastest(a.new)? - fastest(1)?) / (a.new - 1) as f64;
            anyhow::ensure!(
                per_step > 0.0,
                "--work decode: {} new tokens took no longer than one on {name}; the steps are too short to time, raise --new",
                a.new
            );
            steps.push(per_step);
            bws.push(probe.measure(2));
        }
        let paired: Vec<f64> = steps
            .iter()
            .zip(&bws)
            .map(|(t, bw)| t * bw / bytes as f64)
            .collect();
        let per_step = median(steps);
        let tps = a.batch as f64 / per_step;
        let bw = bws.iter().copied().fold(0.0, f64::max);
        let bound = a.batch as f64 * bw / bytes as f64;
        println!(
            "{}",
            serde_json::json!({"rpt": "decode", "model": name, "batch": a.batch, "prompt": a.prompt,
                "new": a.new, "tokens_per_s": tps, "ms_per_step": 1000.0 * per_step,
                "weight_bytes_per_step": bytes, "read_bandwidth_gb_s": bw / 1e9,
                "bound_tokens_per_s": bound, "bound_over_measured": bound / tps,
                "bound_over_measured_paired": median(paired),
                "bandwidth_bound_ms": 1000.0 * bytes as f64 / bw,
                "peak_gflop_s": peak / 1e9, "gflop_per_step": flops / 1e9,
                "multiply_add_bound_ms": 1000.0 * flops / peak,
                "threads": threads, "samples": a.repeat, "dtype": format!("{dtype:?}")})
        );
    }
    Ok(())
}
