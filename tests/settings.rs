//! `pipe settings` lists exactly the keys pipeline files accept: every listed key, given as
//! `--set KEY=<its default>`, passes `pipe status` on the quickstart; keys it does not list
//! are refused with exit 2; and docs/settings.md is what the code generates now.

mod common;

use common::{data_dir, pipe, text};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn quickstart() -> PathBuf {
    repo().join("pipelines/quickstart.toml")
}

/// `pipe settings --json [ARGS]`, flattened to its keys.
fn listed(args: &[&str]) -> Vec<Value> {
    let out = pipe().args(["settings", "--json"]).args(args).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    doc["sections"].as_array().unwrap().iter().flat_map(|s| s["keys"].as_array().unwrap().clone()).collect()
}

fn key(setting: &Value) -> &str {
    setting["key"].as_str().unwrap()
}

/// A `--set` value for `setting`: its default; where it has none, the quickstart's own value,
/// or else a valid example.
fn value(setting: &Value, file: &toml::Table) -> String {
    let k = key(setting);
    if k == "data.path" {
        // on the command line a relative path is relative to the working directory
        return format!("\"{}\"", data_dir().display());
    }
    if !setting["default"].is_null() {
        return toml::Value::try_from(&setting["default"]).unwrap().to_string();
    }
    let (section, field) = k.split_once('.').unwrap();
    if let Some(v) = file.get(section).and_then(|t| t.get(field)) {
        return v.to_string();
    }
    let example = match k {
        "attack.eps" => "0.1",
        "attack.eps_unit" => "\"[0,1]\"",
        "attack.clip" => "[0.1, 0.9]",
        "attack.step_size" => "0.02",
        "pipeline.patience" => "2",
        "train.lr_drop_round" => "1",
        "net.norm" => "\"batch\"",
        "data.texture" => "\"brick\"",
        "igm.negative_size" => "96",
        _ => panic!("{k} has no default and the quickstart does not set it: add an example value here"),
    };
    example.to_string()
}

fn status(store: &Path, sets: &[String]) -> std::process::Output {
    let mut c = pipe();
    c.arg("status").arg(quickstart()).arg("--store").arg(store);
    for s in sets {
        c.arg("--set").arg(s);
    }
    c.output().unwrap()
}

#[test]
fn every_listed_key_is_accepted_with_its_default() {
    let file: toml::Table = toml::from_str(&std::fs::read_to_string(quickstart()).unwrap()).unwrap();
    let all = listed(&[]);
    assert!(all.len() > 40, "{} keys", all.len());
    let dir = tempfile::tempdir().unwrap();
    for s in &all {
        let section = key(s).split_once('.').unwrap().0;
        let mut sets = vec![format!("{}={}", key(s), value(s, &file))];
        // a section the quickstart lacks comes with its required keys
        if !file.contains_key(section) {
            let required = all.iter().filter(|r| r["required"] == true && key(r).starts_with(&format!("{section}.")) && key(r) != key(s));
            sets.extend(required.map(|r| format!("{}={}", key(r), value(r, &file))));
        }
        // sample quality is measured on generative runs only
        if section == "quality" {
            sets.extend(["pipeline.method=igm", "pipeline.variant=unsupervised", "synthesize.stop=classified"].map(String::from));
        }
        let out = status(&dir.path().join("store"), &sets);
        assert!(out.status.success(), "--set {}: {}", sets.join(" --set "), text(&out));
    }
}

#[test]
fn keys_it_does_not_list_are_refused() {
    let all = listed(&[]);
    let file: toml::Table = toml::from_str(&std::fs::read_to_string(quickstart()).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let refused = |set: String| {
        let out = status(&store, std::slice::from_ref(&set));
        assert_eq!(out.status.code(), Some(2), "--set {set}: {}", text(&out));
        assert!(!store.exists(), "--set {set} wrote {}", store.display());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let sections: Vec<&str> = file.keys().map(String::as_str).collect();
    for section in &sections {
        let e = refused(format!("{section}.no_such_setting=1"));
        assert!(e.contains("unknown field `no_such_setting`"), "{e}");
    }
    refused("no_such_section.seed=1".into());
    // each key belongs to its own section only: under another one it is unknown
    for s in &all {
        let (section, field) = key(s).split_once('.').unwrap();
        let elsewhere = sections.iter().find(|o| **o != section && !all.iter().any(|k| key(k) == format!("{o}.{field}")));
        if let Some(other) = elsewhere {
            let e = refused(format!("{other}.{field}={}", value(s, &file)));
            assert!(e.contains(&format!("unknown field `{field}`")), "{other}.{field}: {e}");
        }
    }
}

#[test]
fn a_prefix_narrows_the_list_and_one_that_matches_nothing_is_refused() {
    let all: Vec<String> = listed(&[]).iter().map(|s| key(s).to_string()).collect();
    let some: Vec<String> = listed(&["train.lr"]).iter().map(|s| key(s).to_string()).collect();
    assert_eq!(some, all.iter().filter(|k| k.starts_with("train.lr")).cloned().collect::<Vec<_>>());
    assert!(some.len() >= 2, "{some:?}");
    let out = pipe().args(["settings", "tran"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no setting starts with `tran`"), "{}", text(&out));
    // the text form lists the same keys, each with its default or "required"
    let out = pipe().arg("settings").output().unwrap();
    let shown = String::from_utf8(out.stdout).unwrap();
    for k in &all {
        assert!(shown.lines().any(|l| l.starts_with(&format!("  {k} = "))), "{k} not in\n{shown}");
    }
}

#[test]
fn docs_settings_md_is_what_the_code_generates() {
    let out = pipe().args(["settings", "--markdown"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let generated = String::from_utf8(out.stdout).unwrap();
    for s in listed(&[]) {
        assert!(generated.contains(&format!("| `{}` |", key(&s))), "{} not in the Markdown", key(&s));
    }
    let path = repo().join("docs/settings.md");
    if std::env::var_os("PIPE_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let first_difference = committed.lines().chain(["<end>"]).zip(generated.lines().chain(["<end>"])).enumerate().find(|(_, (c, g))| c != g);
    if let Some((i, (c, g))) = first_difference {
        panic!("docs/settings.md differs from `pipe settings --markdown` at line {}:\n  committed: {c}\n  generated: {g}\n(rewrite it with PIPE_BLESS=1 cargo test --release --test settings)", i + 1);
    }
}
