//! Experiment configurations (`conf/experiment/*.toml`) and their sweeps.
//!
//! ```toml
//! name = "07b_dynamic_batch"
//! description = "Batch size × batch timeout"
//!
//! [server]                      # ce-supervisor settings; an array is a sweep
//! max_batch_size = [32, 128]
//! batch_timeout_ms = [1, 5, 20]
//!
//! [client]
//! batch_sizes = [32, 128]       # passages per request
//! concurrency = [1, 4]
//! window_s = 5                  # measurement window
//! call = "rerank"               # or score, tokenize, score_tokens
//! transport = "grpc"            # or http (rerank only)
//! # pairs_file = "pairs.jsonl"  # {"query", "passage"} lines instead of the generator
//! # mode = "ramp"               # with ramp = { from = 0.5, to = 4, seconds = 30 }
//!
//! [[variant]]                   # optional named variants, each over [server]
//! label = "2 tok × 4 model"
//! tokenizers = 2
//! replicas = 4
//!
//! [standard]                    # overrides for `--standard`: the whole grid, shorter windows
//! client = { window_s = 3, max_windows = 6 }
//!
//! [quick]                       # overrides for `--quick`: a smoke run
//! server = { batch_timeout_ms = [1, 20] }
//! client = { batch_sizes = [32], concurrency = [4], window_s = 2 }
//! ```
//!
//! A [`Profile`] picks which overrides apply: none (the full run), the
//! `[standard]` ones (every grid point, measured more briefly: all
//! experiments within about an hour on 2 cores) or the `[quick]` ones.
//!
//! A file may start from another: `extends = "14_production"` reads
//! `14_production.toml` beside it and lays this file's keys over it
//! (tables merge key by key, any other value replaces), so a variation
//! names only what differs. `--set client.concurrency=[1,4]` then overrides
//! any key from the command line, after the profile's overrides, with a TOML value (a
//! bare word is a string: `--set server.dtype=fp16`).
//!
//! Settings whose value is itself a list (`devices`, `instances`) sweep
//! only when given as a list of lists. Named `[[variant]]`s replace the
//! single base: each is `[server]` with its keys on top, crossed with any
//! sweep left in `[server]`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::client::{Call, Transport};
use crate::load::Ramp;

/// Why a configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// It is not a valid configuration.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Settings whose value is a list, so only a list of lists sweeps them.
const LIST_SETTINGS: &[&str] = &["devices", "instances"];

/// How the client loads the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LoadMode {
    /// `concurrency` clients, each sending its next request when the last
    /// is answered.
    #[default]
    Closed,
    /// Poisson arrivals at `rate` requests per second.
    Open,
    /// Poisson arrivals at a rate rising as `ramp` says.
    Ramp,
}

/// The client side of an experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// Passages per request (the seed's batch sizes).
    pub batch_sizes: Vec<usize>,
    /// Closed loop: concurrent clients, one measurement per level.
    pub concurrency: Vec<usize>,
    /// Open loop: requests per second, one measurement per rate.
    pub rates: Vec<f64>,
    /// Closed loop, open loop or ramp.
    pub mode: LoadMode,
    /// Ramp mode: the rising rate.
    pub ramp: Option<Ramp>,
    /// The API each request calls.
    pub call: Call,
    /// gRPC or HTTP.
    pub transport: Transport,
    /// Pairs from this JSON-lines file instead of the generated workload
    /// (relative to the working directory).
    pub pairs_file: Option<PathBuf>,
    /// Seconds of warm-up before measuring.
    pub warmup_s: f64,
    /// Seconds per measurement window.
    pub window_s: f64,
    /// Consecutive windows that must agree within `tolerance`.
    pub stable_windows: usize,
    /// Relative spread allowed between agreeing windows.
    pub tolerance: f64,
    /// Windows at most before a measurement is reported as unstable.
    pub max_windows: usize,
    /// Workload seed.
    pub seed: u64,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            batch_sizes: vec![32],
            concurrency: vec![1, 2, 4],
            rates: Vec::new(),
            mode: LoadMode::Closed,
            ramp: None,
            call: Call::Rerank,
            transport: Transport::Grpc,
            pairs_file: None,
            warmup_s: 3.0,
            window_s: 5.0,
            stable_windows: 3,
            tolerance: 0.05,
            max_windows: 8,
            seed: 42,
        }
    }
}

/// How thoroughly an experiment is run: which of its override tables
/// apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// The file as written: every grid point, the longest windows.
    #[default]
    Full,
    /// `[standard]` overrides: every grid point, shorter measurement.
    Standard,
    /// `[quick]` overrides: a few points, a smoke run.
    Quick,
}

impl Profile {
    /// The override table's name in the file (`None` for the full run).
    pub fn section(self) -> Option<&'static str> {
        match self {
            Profile::Full => None,
            Profile::Standard => Some("standard"),
            Profile::Quick => Some("quick"),
        }
    }
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.section().unwrap_or("full"))
    }
}

/// A profile's overrides (`[standard]` or `[quick]`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Overrides {
    /// Replaces these server keys.
    pub server: toml::Table,
    /// Replaces these client keys.
    pub client: toml::Table,
}

/// One experiment file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Name (results are written under it).
    pub name: String,
    /// What it measures and why.
    pub description: String,
    /// ce-supervisor settings; arrays are sweeps.
    #[serde(default)]
    pub server: toml::Table,
    /// Load settings.
    #[serde(default)]
    pub client: ClientConfig,
    /// `--standard` overrides.
    #[serde(default)]
    pub standard: Overrides,
    /// `--quick` overrides.
    #[serde(default)]
    pub quick: Overrides,
    /// Named server variants (`[[variant]]`, each with a `label`).
    #[serde(default, rename = "variant")]
    pub named: Vec<toml::Table>,
}

/// One server configuration of a sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// `key=value` of the swept keys, e.g. `dtype=f16,replicas=2`
    /// (`default` when nothing is swept).
    pub label: String,
    /// The swept keys and their values here.
    pub swept: BTreeMap<String, toml::Value>,
    /// Every server setting of this variant.
    pub settings: toml::Table,
}

/// How many files an `extends` chain may hold: more is taken for a cycle.
const MAX_EXTENDS: usize = 8;

/// One command-line override, `--set server.replicas=[1,2]`: a dotted key
/// into the experiment file and the TOML value it gets.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    /// The key's path, e.g. `["server", "replicas"]`.
    pub key: Vec<String>,
    /// Its new value.
    pub value: toml::Value,
}

impl FromStr for Setting {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (key, raw) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: KEY=VALUE, e.g. server.replicas=[1,2]"))?;
        let key: Vec<String> = key
            .trim()
            .split('.')
            .map(|k| k.trim().to_string())
            .collect();
        if key.iter().any(String::is_empty) {
            return Err(format!("{s:?}: an empty part in the key"));
        }
        let raw = raw.trim();
        // A bare word (`fp16`, `http`) is no TOML value; take it as a string.
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.to_string()));
        Ok(Self { key, value })
    }
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.key.join("."), self.value)
    }
}

impl Setting {
    fn apply(&self, table: &mut toml::Table) -> Result<(), String> {
        let (last, parents) = self.key.split_last().ok_or("an empty key")?;
        let mut here = table;
        for (depth, part) in parents.iter().enumerate() {
            let entry = here
                .entry(part.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            here = entry.as_table_mut().ok_or_else(|| {
                format!(
                    "--set {self}: {} is not a table",
                    self.key[..=depth].join(".")
                )
            })?;
        }
        here.insert(last.clone(), self.value.clone());
        Ok(())
    }
}

/// Lays `over` onto `base`: tables merge key by key, anything else
/// (arrays included, so a sweep is replaced whole) replaces.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// The file at `path` with its `extends` chain resolved, as one table.
fn resolve(path: &Path, chain: &mut Vec<PathBuf>) -> Result<toml::Table, ExperimentError> {
    let invalid = |message: String| ExperimentError::Invalid {
        path: path.display().to_string(),
        message,
    };
    if chain.len() >= MAX_EXTENDS || chain.iter().any(|p| p == path) {
        return Err(invalid(format!(
            "extends goes round or deeper than {MAX_EXTENDS} files: {}",
            chain
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" → ")
        )));
    }
    chain.push(path.to_path_buf());
    let text = std::fs::read_to_string(path).map_err(|source| ExperimentError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    if !table.contains_key("name")
        && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
    {
        table.insert("name".into(), stem.into());
    }
    match table.remove("extends") {
        None => Ok(table),
        Some(toml::Value::String(base)) => {
            let base_path = path
                .parent()
                .unwrap_or(Path::new("."))
                .join(format!("{base}.toml"));
            let mut merged = resolve(&base_path, chain)?;
            // The base's name and description are its own, not this file's.
            merged.remove("name");
            merged.remove("description");
            merge(&mut merged, table);
            Ok(merged)
        }
        Some(other) => Err(invalid(format!(
            "extends = {other}: the name of another experiment file, e.g. \"14_production\""
        ))),
    }
}

impl Experiment {
    /// Reads and checks a configuration with its `extends` chain; the
    /// profile's overrides apply, then `sets` in order.
    pub fn load(path: &Path, profile: Profile, sets: &[Setting]) -> Result<Self, ExperimentError> {
        let table = resolve(path, &mut Vec::new())?;
        Self::from_table(table, profile, sets).map_err(|message| ExperimentError::Invalid {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses a configuration's text (no `extends`: that needs a file).
    pub fn parse(text: &str, profile: Profile) -> Result<Self, String> {
        let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        if table.contains_key("extends") {
            return Err("extends is resolved relative to a file: use Experiment::load".into());
        }
        Self::from_table(table, profile, &[])
    }

    fn from_table(
        mut table: toml::Table,
        profile: Profile,
        sets: &[Setting],
    ) -> Result<Self, String> {
        let overrides = profile.section().and_then(|name| match table.get(name) {
            Some(toml::Value::Table(t)) => Some((name, t.clone())),
            _ => None,
        });
        if let Some((name, overrides)) = overrides {
            for (section, keys) in overrides {
                match (table.get_mut(&section), keys) {
                    (Some(toml::Value::Table(t)), toml::Value::Table(keys)) => t.extend(keys),
                    (None, keys @ toml::Value::Table(_)) => {
                        table.insert(section, keys);
                    }
                    _ => return Err(format!("[{name}] {section}: a table of keys to replace")),
                }
            }
        }
        for set in sets {
            set.apply(&mut table)?;
        }
        let experiment: Experiment = table
            .try_into()
            .map_err(|e: toml::de::Error| e.to_string())?;
        experiment.check()?;
        Ok(experiment)
    }

    fn check(&self) -> Result<(), String> {
        let c = &self.client;
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
        {
            return Err(format!(
                "name {:?}: letters, digits, _ and - only",
                self.name
            ));
        }
        if c.batch_sizes.is_empty() || c.batch_sizes.contains(&0) {
            return Err("client.batch_sizes: at least one, each at least 1".into());
        }
        match c.mode {
            LoadMode::Closed if c.concurrency.is_empty() || c.concurrency.contains(&0) => {
                Err("client.concurrency: at least one level, each at least 1".into())
            }
            LoadMode::Open if c.rates.is_empty() || c.rates.iter().any(|r| *r <= 0.0) => {
                Err("client.rates: at least one rate, each above 0".into())
            }
            LoadMode::Ramp
                if !c
                    .ramp
                    .is_some_and(|r| r.from > 0.0 && r.to >= r.from && r.seconds > 0.0) =>
            {
                Err("client.ramp: { from > 0, to ≥ from, seconds > 0 } for mode = \"ramp\"".into())
            }
            _ if c.transport == Transport::Http && c.call != Call::Rerank => Err(format!(
                "client.call {:?} is gRPC only; transport = \"http\" serves rerank",
                c.call
            )),
            _ if c.window_s <= 0.0 || c.stable_windows == 0 || c.max_windows < c.stable_windows => {
                Err("client: window_s > 0 and max_windows ≥ stable_windows ≥ 1".into())
            }
            _ => self.check_named(),
        }
    }

    fn check_named(&self) -> Result<(), String> {
        let mut labels = Vec::new();
        for (i, v) in self.named.iter().enumerate() {
            match v.get("label") {
                Some(toml::Value::String(l)) if !l.is_empty() && !labels.contains(l) => {
                    labels.push(l.clone())
                }
                _ => return Err(format!("variant {i}: a unique, non-empty label")),
            }
        }
        Ok(())
    }

    /// The server variants: each named variant (or the one base) crossed
    /// with the cartesian product of every swept key, keys in alphabetical
    /// order, values in file order.
    pub fn variants(&self) -> Vec<Variant> {
        let bases: Vec<(String, toml::Table)> = if self.named.is_empty() {
            vec![(String::new(), toml::Table::new())]
        } else {
            self.named
                .iter()
                .map(|v| {
                    let mut keys = v.clone();
                    let label = match keys.remove("label") {
                        Some(toml::Value::String(l)) => l,
                        _ => String::new(),
                    };
                    (label, keys)
                })
                .collect()
        };
        let mut variants: Vec<Variant> = bases
            .iter()
            .map(|(label, _)| Variant {
                label: label.clone(),
                swept: BTreeMap::new(),
                settings: toml::Table::new(),
            })
            .collect();
        for (key, value) in &self.server {
            let (choices, swept): (Vec<toml::Value>, bool) = match value {
                toml::Value::Array(items) if is_sweep(key, items) => (items.clone(), true),
                other => (vec![other.clone()], false),
            };
            variants = variants
                .into_iter()
                .flat_map(|v| {
                    choices.iter().map(move |choice| {
                        let mut v = v.clone();
                        v.settings.insert(key.clone(), choice.clone());
                        if swept {
                            v.swept.insert(key.clone(), choice.clone());
                        }
                        v
                    })
                })
                .collect();
        }
        let per_base = variants.len() / bases.len();
        for (i, v) in variants.iter_mut().enumerate() {
            let (name, keys) = &bases[i / per_base];
            v.settings.extend(keys.clone());
            let swept = self
                .server
                .keys()
                .filter_map(|k| v.swept.get(k).map(|value| format!("{k}={}", plain(value))))
                .collect::<Vec<_>>()
                .join(",");
            v.label = match (name.is_empty(), swept.is_empty()) {
                (true, true) => "default".into(),
                (true, false) => swept,
                (false, true) => name.clone(),
                (false, false) => format!("{name},{swept}"),
            };
            for key in keys.keys() {
                v.swept.insert(key.clone(), keys[key].clone());
            }
        }
        variants
    }
}

fn is_sweep(key: &str, items: &[toml::Value]) -> bool {
    if LIST_SETTINGS.contains(&key) {
        items.iter().all(|i| i.is_array())
    } else {
        true
    }
}

/// A value as a label shows it: strings without quotes, lists joined by `+`.
pub fn plain(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Array(items) => items.iter().map(plain).collect::<Vec<_>>().join("+"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SWEEP: &str = r#"
name = "sweep"
description = "two keys swept"
[server]
replicas = [1, 2]
dtype = ["f32", "q8_0"]
tokenizers = 1
devices = ["cpu"]
[client]
batch_sizes = [32, 128]
concurrency = [1, 4]
[standard]
client = { window_s = 2.5, max_windows = 5 }
[quick]
server = { dtype = ["f32"] }
client = { batch_sizes = [32], window_s = 1.5 }
"#;

    #[test]
    fn arrays_sweep_as_a_cartesian_product_in_key_order() {
        let e = Experiment::parse(SWEEP, Profile::Full).unwrap();
        let v = e.variants();
        let labels: Vec<&str> = v.iter().map(|v| v.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "dtype=f32,replicas=1",
                "dtype=f32,replicas=2",
                "dtype=q8_0,replicas=1",
                "dtype=q8_0,replicas=2"
            ]
        );
        // Plain keys and list-valued settings given flat are not swept.
        assert_eq!(v[3].settings["tokenizers"], toml::Value::Integer(1));
        assert_eq!(
            v[3].settings["devices"],
            toml::Value::Array(vec!["cpu".into()])
        );
        assert!(!v[3].swept.contains_key("devices"));
    }

    #[test]
    fn a_list_of_lists_sweeps_a_list_setting() {
        let e = Experiment::parse(
            "name = \"d\"\ndescription = \"\"\n[server]\ndevices = [[\"cpu\"], [\"cpu\", \"cpu\"]]\n",
            Profile::Full,
        )
        .unwrap();
        let labels: Vec<String> = e.variants().into_iter().map(|v| v.label).collect();
        assert_eq!(labels, ["devices=cpu", "devices=cpu+cpu"]);
    }

    #[test]
    fn quick_overrides_replace_keys() {
        let e = Experiment::parse(SWEEP, Profile::Quick).unwrap();
        assert_eq!(e.variants().len(), 2);
        assert_eq!(e.client.batch_sizes, [32]);
        assert_eq!(e.client.window_s, 1.5);
        assert_eq!(e.client.concurrency, [1, 4]);
    }

    #[test]
    fn the_standard_profile_keeps_the_grid_and_shortens_the_windows() {
        let e = Experiment::parse(SWEEP, Profile::Standard).unwrap();
        assert_eq!(e.variants().len(), 4, "the whole sweep");
        assert_eq!(e.client.batch_sizes, [32, 128]);
        assert_eq!((e.client.window_s, e.client.max_windows), (2.5, 5));
        let full = Experiment::parse(SWEEP, Profile::Full).unwrap();
        assert_eq!(full.client.window_s, ClientConfig::default().window_s);
        assert_eq!(Profile::Standard.to_string(), "standard");
    }

    #[test]
    fn named_variants_sit_on_the_server_base_and_cross_the_sweeps() {
        let e = Experiment::parse(
            r#"
name = "pipeline"
description = ""
[server]
tokenizers = 1
replicas = 1
max_batch_size = [16, 64]
[client]
call = "score_tokens"
[[variant]]
label = "1x1"
[[variant]]
label = "2 tok x 4 model"
tokenizers = 2
replicas = 4
"#,
            Profile::Full,
        )
        .unwrap();
        let v = e.variants();
        let labels: Vec<&str> = v.iter().map(|v| v.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "1x1,max_batch_size=16",
                "1x1,max_batch_size=64",
                "2 tok x 4 model,max_batch_size=16",
                "2 tok x 4 model,max_batch_size=64"
            ]
        );
        assert_eq!(v[0].settings["replicas"], toml::Value::Integer(1));
        assert_eq!(v[3].settings["replicas"], toml::Value::Integer(4));
        assert_eq!(v[3].settings["tokenizers"], toml::Value::Integer(2));
        assert!(!v[3].settings.contains_key("label"));
        assert_eq!(e.client.call, Call::ScoreTokens);
    }

    #[test]
    fn client_modes_parse_and_bad_combinations_are_named() {
        let e = Experiment::parse(
            "name = \"r\"\ndescription = \"\"\n[client]\nmode = \"ramp\"\nramp = { from = 0.5, to = 4.0, seconds = 20 }\ntransport = \"http\"\n",
            Profile::Full,
        )
        .unwrap();
        assert_eq!(e.client.mode, LoadMode::Ramp);
        assert_eq!(e.client.ramp.map(|r| r.to), Some(4.0));
        assert_eq!(e.client.transport, Transport::Http);
        let bad = |client: &str| {
            Experiment::parse(
                &format!("name = \"x\"\ndescription = \"\"\n[client]\n{client}\n"),
                Profile::Full,
            )
            .unwrap_err()
        };
        assert!(bad("mode = \"ramp\"").contains("client.ramp"));
        assert!(
            bad("mode = \"ramp\"\nramp = { from = 4.0, to = 1.0, seconds = 5 }")
                .contains("client.ramp")
        );
        assert!(bad("transport = \"http\"\ncall = \"tokenize\"").contains("gRPC only"));
        assert!(bad("call = \"embed\"").contains("call"));
        let unnamed = Experiment::parse(
            "name = \"x\"\ndescription = \"\"\n[[variant]]\nreplicas = 2\n",
            Profile::Full,
        )
        .unwrap_err();
        assert!(unnamed.contains("label"), "{unnamed}");
    }

    #[test]
    fn a_file_extends_another_and_names_only_what_differs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("base.toml"),
            "name = \"base\"\ndescription = \"the base\"\n[server]\nreplicas = 3\ntokenizers = 2\n\
             [client]\nbatch_sizes = [32, 64]\nconcurrency = [1, 2, 4]\n[quick]\nclient = { window_s = 1.0 }\n",
        )
        .unwrap();
        let child = dir.path().join("child.toml");
        std::fs::write(
            &child,
            "extends = \"base\"\ndescription = \"two replicas\"\n[server]\nreplicas = [1, 2]\n[client]\nconcurrency = [4]\n",
        )
        .unwrap();
        let e = Experiment::load(&child, Profile::Full, &[]).unwrap();
        assert_eq!(e.name, "child");
        assert_eq!(e.description, "two replicas");
        assert_eq!(e.server["tokenizers"], toml::Value::Integer(2));
        let labels: Vec<String> = e.variants().into_iter().map(|v| v.label).collect();
        assert_eq!(labels, ["replicas=1", "replicas=2"]);
        assert_eq!(e.client.batch_sizes, [32, 64]);
        assert_eq!(e.client.concurrency, [4]);
        // The base's [quick] carries over.
        assert_eq!(
            Experiment::load(&child, Profile::Quick, &[])
                .unwrap()
                .client
                .window_s,
            1.0
        );

        std::fs::write(dir.path().join("a.toml"), "extends = \"b\"\n").unwrap();
        std::fs::write(dir.path().join("b.toml"), "extends = \"a\"\n").unwrap();
        let cycle = Experiment::load(&dir.path().join("a.toml"), Profile::Full, &[])
            .unwrap_err()
            .to_string();
        assert!(cycle.contains("goes round"), "{cycle}");
        std::fs::write(dir.path().join("lost.toml"), "extends = \"nowhere\"\n").unwrap();
        let missing = Experiment::load(&dir.path().join("lost.toml"), Profile::Full, &[])
            .unwrap_err()
            .to_string();
        assert!(missing.contains("nowhere.toml"), "{missing}");
    }

    #[test]
    fn command_line_sets_override_any_key_after_quick() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sweep.toml");
        std::fs::write(&path, SWEEP).unwrap();
        let sets: Vec<Setting> = [
            "server.replicas=[1,2,3]",
            "client.concurrency=[1, 4]",
            "server.dtype=fp16",
            "client.window_s=0.5",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let e = Experiment::load(&path, Profile::Quick, &sets).unwrap();
        // dtype is one value now, so only replicas sweeps.
        let labels: Vec<String> = e.variants().into_iter().map(|v| v.label).collect();
        assert_eq!(labels, ["replicas=1", "replicas=2", "replicas=3"]);
        assert_eq!(e.server["dtype"], toml::Value::String("fp16".into()));
        assert_eq!(e.client.concurrency, [1, 4]);
        // --set wins over [quick]'s window_s = 1.5.
        assert_eq!(e.client.window_s, 0.5);
        assert_eq!(sets[0].to_string(), "server.replicas=[1, 2, 3]");

        assert!(
            "replicas"
                .parse::<Setting>()
                .unwrap_err()
                .contains("KEY=VALUE")
        );
        assert!(
            "server..x=1"
                .parse::<Setting>()
                .unwrap_err()
                .contains("empty")
        );
        let into_scalar = Experiment::load(&path, Profile::Full, &["name.x=1".parse().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(into_scalar.contains("name is not a table"), "{into_scalar}");
        let unknown = Experiment::load(
            &path,
            Profile::Full,
            &["client.concurrenc=[1]".parse().unwrap()],
        )
        .unwrap_err()
        .to_string();
        assert!(unknown.contains("concurrenc"), "{unknown}");
    }

    #[test]
    fn nothing_swept_is_one_default_variant() {
        let e = Experiment::parse("name = \"x\"\ndescription = \"\"\n", Profile::Full).unwrap();
        let v = e.variants();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].label, "default");
    }

    #[test]
    fn mistakes_are_named() {
        let bad = |text: &str| Experiment::parse(text, Profile::Full).unwrap_err();
        assert!(
            bad("name = \"x\"\ndescription = \"\"\n[client]\nconcurrency = []\n")
                .contains("concurrency")
        );
        assert!(
            bad("name = \"x\"\ndescription = \"\"\n[client]\nbatch_size = [1]\n")
                .contains("batch_size")
        );
        assert!(bad("name = \"a b\"\ndescription = \"\"\n").contains("name"));
        assert!(
            bad("name = \"x\"\ndescription = \"\"\n[client]\nmode = \"open\"\n").contains("rates")
        );
    }

    #[test]
    fn every_shipped_experiment_parses_quick_and_full() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conf/experiment");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                for profile in [Profile::Full, Profile::Standard, Profile::Quick] {
                    let e = Experiment::load(&path, profile, &[]).unwrap_or_else(|e| panic!("{e}"));
                    assert!(!e.variants().is_empty());
                    assert_eq!(
                        Some(e.name.as_str()),
                        path.file_stem().and_then(|s| s.to_str())
                    );
                }
                names.push(path.file_stem().unwrap().to_string_lossy().to_string());
            }
        }
        names.sort();
        for seed in [
            "01_backend_comparison",
            "07b_dynamic_batch",
            "10_multi_model_pool",
            "10_multi_model_pool_tokenizer_pool",
            "10a_padding_base",
            "11_3x_replicas",
            "14_production",
            "tokenizer_only",
            "inference_only",
            "full_pipeline",
        ] {
            assert!(
                names.iter().any(|n| n == seed),
                "conf/experiment/{seed}.toml missing: {names:?}"
            );
        }
    }
}
