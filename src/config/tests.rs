//! The config's tests: bad values named by key, hostile numbers, property tests over every numeric key,
//! and every shipped config.

mod cases {
    use crate::config::*;
    use std::path::Path;

    fn err(text: &str) -> String {
        Config::parse(text, Path::new("run.toml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn defaults_validate_and_round_trip() {
        let c = Config::default();
        c.validate(Path::new("x")).unwrap();
        let text = toml::to_string(&c).unwrap();
        assert_eq!(Config::parse(&text, Path::new("x")).unwrap(), c);
    }

    #[test]
    fn a_loss_type_fills_the_keys_left_out_and_a_key_set_wins() {
        use crate::grpo::{LossAgg, LossType, ScaleRewards};
        let parse = |t: &str| Config::parse(t, Path::new("run.toml")).unwrap().grpo;
        let g = parse("[rollout]\nmax_new_tokens = 40\n[grpo]\nloss_type = \"dapo\"\n");
        assert_eq!(g.loss_type, LossType::Dapo);
        assert_eq!((g.epsilon_low, g.epsilon_high), (0.2, 0.28));
        assert_eq!(
            (g.loss_agg_mode, g.overlong_buffer),
            (LossAgg::TokenMean, 8)
        );
        let g = parse("[grpo]\nloss_type = \"dr_grpo\"\n");
        assert_eq!(g.scale_rewards, ScaleRewards::None);
        assert_eq!(g.loss_agg_mode, LossAgg::SeqMeanTokenSumNorm);
        let g = parse("[grpo]\nloss_type = \"gspo\"\nepsilon_high = 0.001\n");
        assert_eq!((g.epsilon_low, g.epsilon_high), (3e-4, 1e-3));
        assert_eq!(g.loss_agg_mode, LossAgg::SeqMeanTokenMean);
        let g =
            parse("[grpo]\nloss_type = \"dapo\"\noverlong_buffer = 0\nscale_rewards = \"batch\"\n");
        assert_eq!(
            (g.overlong_buffer, g.scale_rewards),
            (0, ScaleRewards::Batch)
        );
        // The preset is written out: the saved config reads back to the same run.
        let c = Config::parse("[grpo]\nloss_type = \"cispo\"\n", Path::new("x")).unwrap();
        assert_eq!(c.grpo.epsilon_high, 4.0);
        let again = Config::parse(&toml::to_string(&c).unwrap(), Path::new("x")).unwrap();
        assert_eq!(again, c);
        let e = err("[grpo]\nloss_type = \"ppo\"\n");
        assert!(
            e.contains("loss_type") && e.contains("ppo") && e.contains("gspo"),
            "{e}"
        );
        let e = err("[grpo]\noff_policy = \"tis\"\nis_cap = 0.5\n");
        assert!(
            e.contains("`grpo.is_cap` must be in (1, 1000000000]"),
            "{e}"
        );
        let e = err("[rollout]\nmax_new_tokens = 8\n[grpo]\noverlong_buffer = 9\n");
        assert!(e.contains("grpo.overlong_buffer"), "{e}");
        assert_eq!(parse("[grpo]\nis_cap = inf\n").is_cap, f64::INFINITY);
        let g = parse("[grpo]\nactivation_checkpointing = \"always\"\n");
        assert_eq!(g.activation_checkpointing, ActivationCheckpointing::Always);
        let e = err("[grpo]\nactivation_checkpointing = true\n");
        assert!(e.contains("activation_checkpointing"), "{e}");
        let e = err("[grpo]\nactivation_checkpointing = \"sometimes\"\n");
        assert!(e.contains("sometimes") && e.contains("always"), "{e}");
    }

    #[test]
    fn bad_configs_name_the_key_and_value() {
        let e = err("[rollout]\ngroup_size = 1\n");
        assert!(
            e.contains("run.toml") && e.contains("`rollout.group_size` must be >= 2, got 1"),
            "{e}"
        );
        let e = err("[rollout]\ngroupsize = 8\n");
        assert!(
            e.contains("unknown field") && e.contains("groupsize"),
            "{e}"
        );
        let e = err("[reward]\nvariant = \"exact\"\n");
        assert!(
            e.contains("reward.variant") && e.contains("exact") && e.contains("prefix_match"),
            "{e}"
        );
        let e = err("[model]\npath = \"/no/such/model\"\nbootstrap_if_missing = false\n");
        assert!(
            e.contains("model.path") && e.contains("/no/such/model"),
            "{e}"
        );
        let e = err("[grpo]\nloss_agg_mode = \"mean\"\n");
        assert!(e.contains("loss_agg_mode") || e.contains("mean"), "{e}");
        let e = err("[corpus]\nkind = \"files\"\n");
        assert!(e.contains("corpus.path"), "{e}");
        let e = err("[prompt]\ntemplate = \"no slot\"\n");
        assert!(e.contains("{context}"), "{e}");
        let e = err("seed = \"x\"\n");
        assert!(e.contains("seed"), "{e}");
        let e = err("[cluster]\nlisten = \"myhost\"\ncookie = \"c\"\n");
        assert!(
            e.contains("cluster.listen") && e.contains("IP:PORT") && e.contains("myhost"),
            "{e}"
        );
        let e = err("[cluster]\nlisten = \"0.0.0.0:4870\"\ncookie = \"\"\n");
        assert!(e.contains("cluster.cookie"), "{e}");
        let e = err("[cluster]\nlisten = \"0.0.0.0:4870\"\ncookie = \"c\"\nwait_s = -1\n");
        assert!(e.contains("cluster.wait_s") && e.contains("-1"), "{e}");
        let e = err("[cluster]\nlisten = \"0.0.0.0:4870\"\n");
        assert!(e.contains("cookie"), "{e}");
        let ok = Config::parse(
            "[cluster]\nlisten = \"127.0.0.1:4870\"\ncookie = \"c\"\nmin_workers = 2\n",
            Path::new("x"),
        )
        .unwrap();
        let c = ok.cluster.as_ref().unwrap();
        assert_eq!(
            (c.min_workers, c.wait_s, c.request_timeout_s),
            (2, 300.0, 600.0)
        );
        let text = toml::to_string(&ok).unwrap();
        assert_eq!(Config::parse(&text, Path::new("x")).unwrap(), ok);
    }

    /// The hostile numbers found by hand: NaN read as a default, sizes that overflowed an allocation,
    /// rates that turned every weight into NaN. Each is refused naming its key.
    #[test]
    fn hostile_numbers_are_refused_by_key() {
        let max = i64::MAX;
        for (text, key) in [
            ("[rollout]\ntemperature = nan\n", "rollout.temperature"),
            ("[rollout]\ntop_p = nan\n", "rollout.top_p"),
            ("[grpo]\nepsilon_low = nan\n", "grpo.epsilon_low"),
            ("[grpo]\nepsilon_high = nan\n", "grpo.epsilon_high"),
            ("[grpo]\nbeta = nan\n", "grpo.beta"),
            ("[grpo]\nbeta = inf\n", "grpo.beta"),
            ("[optim]\nweight_decay = nan\n", "optim.weight_decay"),
            ("[optim]\nlr = 1e308\n", "optim.lr"),
            ("[optim]\nlr = nan\n", "optim.lr"),
            ("[optim]\nmax_grad_norm = nan\n", "optim.max_grad_norm"),
            ("[reward]\nema_tau = nan\n", "reward.ema_tau"),
            ("[eval]\ntemperature = -inf\n", "eval.temperature"),
            ("[states]\nmin_entropy = nan\n", "states.min_entropy"),
            (
                "[corpus]\nheldout_fraction = nan\n",
                "corpus.heldout_fraction",
            ),
            ("[bootstrap]\nlr = nan\n", "bootstrap.lr"),
            (
                "[bootstrap]\npretrain_thought_share = 1.5\n",
                "bootstrap.pretrain_thought_share",
            ),
            (
                "[bootstrap]\npretrain_thought_share = nan\n",
                "bootstrap.pretrain_thought_share",
            ),
            (
                &format!("[rollout]\ngroup_size = {max}\n"),
                "rollout.group_size",
            ),
            (
                &format!("[rollout]\nstates_per_step = {max}\n"),
                "rollout.states_per_step",
            ),
            (
                &format!("[rollout]\nmax_new_tokens = {max}\n"),
                "rollout.max_new_tokens",
            ),
            (
                &format!("[corpus]\ndocuments = {max}\n"),
                "corpus.documents",
            ),
            (&format!("[grpo]\nppo_epochs = {max}\n"), "grpo.ppo_epochs"),
            (
                "[rollout]\ngroup_size = 4096\nstates_per_step = 4096\n",
                "rollout.states_per_step",
            ),
            ("[eval]\npositions = 0\n", "eval.positions"),
        ] {
            let e = err(text);
            assert!(e.contains(&format!("`{key}`")), "{text}: {e}");
        }
        let e = err("[rollout]\ntemperature = nan\n");
        assert!(e.contains("finite") && e.contains("NaN"), "{e}");
        let e = err("[eval]\npositions = 0\n");
        assert!(e.contains("eval_before_after"), "{e}");
        // Evaluation off: no positions needed.
        Config::parse(
            "[train]\neval_before_after = false\n[eval]\npositions = 0\n",
            Path::new("x"),
        )
        .unwrap();
    }

    /// The string-valued keys are enums now; a wrong value still names the key and the choices.
    #[test]
    fn choices_name_their_key_and_values() {
        for (text, key, choices) in [
            (
                "[grpo]\nadvantage = \"ppo\"\n",
                "advantage",
                ["grpo", "rlp"],
            ),
            (
                "[grpo]\nloss_tokens = \"all\"\n",
                "loss_tokens",
                ["completion", "thought"],
            ),
            ("[corpus]\nkind = \"web\"\n", "kind", ["builtin", "files"]),
        ] {
            let e = err(text);
            assert!(
                e.contains(key) && choices.iter().all(|c| e.contains(c)),
                "{text}: {e}"
            );
        }
        let c = Config::parse(
            "[grpo]\nadvantage = \"rlp\"\nloss_tokens = \"thought\"\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(
            (c.grpo.advantage, c.grpo.loss_tokens),
            (Advantage::Rlp, LossTokens::Thought)
        );
    }

    #[test]
    fn trl_alias_for_group_size() {
        let c = Config::parse("[rollout]\nnum_generations = 4\n", Path::new("x")).unwrap();
        assert_eq!(c.rollout.group_size, 4);
    }
}

mod properties {
    use crate::config::*;
    use proptest::prelude::*;
    use std::path::Path;

    /// Every numeric key of the config tree (cluster included), as (section, key, is_float).
    fn numeric_keys() -> Vec<(String, String, bool)> {
        let cfg = Config {
            cluster: Some(ClusterSection {
                listen: "127.0.0.1:4870".into(),
                cookie: "c".into(),
                min_workers: 0,
                wait_s: 1.0,
                request_timeout_s: 1.0,
            }),
            ..Config::default()
        };
        let v = toml::Value::try_from(&cfg).unwrap();
        let mut out = vec![];
        for (k, x) in v.as_table().unwrap() {
            match x {
                toml::Value::Integer(_) => out.push((String::new(), k.clone(), false)),
                toml::Value::Float(_) => out.push((String::new(), k.clone(), true)),
                toml::Value::Table(t) => {
                    for (k2, y) in t {
                        match y {
                            toml::Value::Integer(_) => out.push((k.clone(), k2.clone(), false)),
                            toml::Value::Float(_) => out.push((k.clone(), k2.clone(), true)),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        out
    }

    fn number() -> impl Strategy<Value = toml::Value> {
        prop_oneof![
            any::<i64>().prop_map(toml::Value::Integer),
            (-3i64..70_000).prop_map(toml::Value::Integer),
            any::<f64>().prop_map(toml::Value::Float),
            prop_oneof![
                Just(f64::NAN),
                Just(f64::INFINITY),
                Just(f64::NEG_INFINITY),
                Just(1e308),
                Just(-0.0),
                Just(0.5),
                Just(1.0),
            ]
            .prop_map(toml::Value::Float),
        ]
    }

    fn text_with(section: &str, key: &str, value: toml::Value) -> String {
        let mut t = toml::Table::new();
        if section.is_empty() {
            t.insert(key.into(), value);
        } else {
            let mut inner = toml::Table::new();
            inner.insert(key.into(), value);
            if section == "cluster" {
                inner.insert("listen".into(), "127.0.0.1:4870".into());
                inner.insert("cookie".into(), "c".into());
            }
            t.insert(section.into(), toml::Value::Table(inner));
        }
        toml::to_string(&t).unwrap()
    }

    #[test]
    fn the_walk_finds_the_numeric_keys() {
        let keys = numeric_keys();
        for want in [
            "group_size",
            "temperature",
            "lr",
            "ema_tau",
            "beta",
            "wait_s",
            "seed",
        ] {
            assert!(
                keys.iter().any(|(_, k, _)| k == want),
                "{want} not in {keys:?}"
            );
        }
        assert!(keys.len() >= 40, "{}", keys.len());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Any value of any numeric key either loads and validates, or is refused naming that key.
        #[test]
        fn any_number_loads_or_names_its_key(i in 0usize..1000, value in number()) {
            let keys = numeric_keys();
            let (section, key, _) = &keys[i % keys.len()];
            let text = text_with(section, key, value.clone());
            match Config::parse(&text, Path::new("run.toml")) {
                Ok(cfg) => {
                    if let toml::Value::Float(x) = value {
                        // `grpo.is_cap = inf` is the one infinity a config may hold: no truncation.
                        let no_cap = key == "is_cap" && x == f64::INFINITY;
                        prop_assert!(x.is_finite() || no_cap, "{section}.{key} = {x} was accepted");
                    }
                    cfg.validate(Path::new("run.toml")).unwrap();
                }
                Err(e) => {
                    let e = e.to_string();
                    prop_assert!(e.contains(key.as_str()), "{section}.{key} = {value}: {e}");
                }
            }
        }

        /// Several numbers at once: never a panic, and an error always names a key that was set.
        #[test]
        fn many_numbers_never_panic(picks in proptest::collection::vec((0usize..1000, number()), 1..8)) {
            let keys = numeric_keys();
            let mut t = toml::Table::new();
            let mut set = vec![];
            for (i, value) in picks {
                let (section, key, _) = &keys[i % keys.len()];
                set.push(key.clone());
                if section.is_empty() {
                    t.insert(key.clone(), value);
                } else {
                    let inner = t
                        .entry(section.clone())
                        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                    let inner = inner.as_table_mut().unwrap();
                    if section == "cluster" {
                        inner.insert("listen".into(), "127.0.0.1:4870".into());
                        inner.insert("cookie".into(), "c".into());
                    }
                    inner.insert(key.clone(), value);
                }
            }
            let text = toml::to_string(&t).unwrap();
            if let Err(e) = Config::parse(&text, Path::new("run.toml")) {
                let e = e.to_string();
                prop_assert!(set.iter().any(|k| e.contains(k.as_str())), "{text}: {e}");
            }
        }
    }
}

mod shipped {
    use crate::config::*;
    use std::path::Path;

    /// Every config in `configs/` parses (apart from paths that only exist on a user's machine).
    #[test]
    fn every_shipped_config_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue; // configs/shapes/: Hugging Face config.json files for `rpt init`
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let cfg: Config =
                toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            match cfg.validate(&path) {
                Ok(()) => {}
                Err(ConfigError::Invalid { key, .. })
                    if key == "model.path" || key == "corpus.path" => {}
                Err(e) => panic!("{e}"),
            }
            crate::reward::from_config(&cfg.reward).unwrap();
            n += 1;
        }
        assert!(n >= 6, "only {n} configs");
    }
}
