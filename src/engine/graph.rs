//! The stage graph the executor walks: stages by position (`train/3`), each with its kind,
//! its parameters and where its inputs come from; and how a stage's key and seed derive
//! from them. Methods build graphs ([`crate::methods`]); nothing here knows what a stage
//! computes.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Where a stage input comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum InputRef {
    /// A file outside the store (raw data), addressed by its content.
    File(PathBuf),
    /// An output of an earlier stage of the graph.
    Output { stage: String, output: String },
    /// An object already in the store, by digest: an output of another pipeline's stage
    /// (a sweep's two-way attack reads two members' classifiers).
    Object(String),
}

impl InputRef {
    pub fn output(stage: &str, output: &str) -> InputRef {
        InputRef::Output { stage: stage.to_string(), output: output.to_string() }
    }
}

/// A stage kind's identity in keys and manifests: its name, and a version bumped whenever
/// its code changes what it outputs for the same inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KindId {
    pub name: &'static str,
    pub version: u32,
}

#[derive(Clone, Debug)]
pub struct StageDef {
    /// Position in the graph: `load`, `train/0`, `synthesize/3`, `train/2/c7`, ...
    pub id: String,
    pub kind: KindId,
    /// The kind's parameter struct, serialized once when the stage was placed.
    pub params: Value,
    pub inputs: BTreeMap<String, InputRef>,
}

/// The round of a stage id (`train/3/c7` -> 3), for kinds placed per round.
pub fn round_of(stage_id: &str) -> Option<u32> {
    stage_id.split('/').nth(1)?.parse().ok()
}

/// The seed of one stage: a function of the run seed and the stage's position only.
pub fn stage_seed(run_seed: u64, stage_id: &str) -> u64 {
    derive_seed(&format!("pipe-seed/{run_seed}/{stage_id}"))
}

/// A seed from a label: the first 8 bytes of its blake3 hash.
pub fn derive_seed(label: &str) -> u64 {
    u64::from_le_bytes(blake3::hash(label.as_bytes()).as_bytes()[..8].try_into().expect("8 bytes"))
}

/// JSON with the keys of every object sorted, whatever map order serde_json was built
/// with (its `preserve_order` feature, which any crate in the build can turn on, would
/// otherwise change every key).
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The key of a stage: blake3 over the canonical JSON of its kind, version, parameters and
/// the content digests of its inputs.
pub fn stage_key(stage: &StageDef, inputs: &BTreeMap<String, String>) -> String {
    key_of(stage.kind.name, stage.kind.version, &stage.params, inputs)
}

/// [`stage_key`] from its parts, as a manifest records them (`pipe verify` recomputes it).
pub fn key_of(kind: &str, version: u32, params: &Value, inputs: &BTreeMap<String, String>) -> String {
    let mut doc = serde_json::Map::new();
    doc.insert("inputs".into(), serde_json::to_value(inputs).expect("strings"));
    doc.insert("kind".into(), Value::String(kind.into()));
    doc.insert("params".into(), params.clone());
    doc.insert("version".into(), Value::from(version));
    blake3::hash(canonical_json(&Value::Object(doc)).as_bytes()).to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_at_every_level_and_keeps_number_forms() {
        // written out of order on purpose: the form must not depend on insertion order
        let v: Value = serde_json::from_str(r#"{"b": {"z": 1, "a": [2.0, {"y": 0.1, "x": -3}]}, "a": "s\"q", "c": null, "d": 18446744073709551615}"#).unwrap();
        assert_eq!(canonical_json(&v), r#"{"a":"s\"q","b":{"a":[2.0,{"x":-3,"y":0.1}],"z":1},"c":null,"d":18446744073709551615}"#);
    }

    #[test]
    fn key_of_a_known_stage_is_pinned() {
        let stage = StageDef {
            id: "train/1".into(),
            kind: KindId { name: "train", version: 4 },
            params: json!({"round": 1, "lr": 0.025, "net": {"width": 1.0, "arch": "cnn4"}, "seed": 42u64}),
            inputs: BTreeMap::new(),
        };
        let inputs: BTreeMap<String, String> = [("train".to_string(), "ab".repeat(32)), ("init".to_string(), "cd".repeat(32))].into_iter().collect();
        // The bytes keyed: what every key of every store so far was made of.
        let expected_form = format!(
            r#"{{"inputs":{{"init":"{}","train":"{}"}},"kind":"train","params":{{"lr":0.025,"net":{{"arch":"cnn4","width":1.0}},"round":1,"seed":42}},"version":4}}"#,
            "cd".repeat(32),
            "ab".repeat(32)
        );
        assert_eq!(stage_key(&stage, &inputs), blake3::hash(expected_form.as_bytes()).to_hex().to_string());
        assert_eq!(&stage_key(&stage, &inputs)[..16], "6834006c311e1a97");
    }

    #[test]
    fn round_of_reads_the_second_segment() {
        assert_eq!(round_of("train/3/c7"), Some(3));
        assert_eq!(round_of("evaluate/12"), Some(12));
        assert_eq!(round_of("load"), None);
    }
}
