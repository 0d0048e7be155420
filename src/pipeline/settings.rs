//! `pipe settings`: every key a pipeline file and `--set` accept, with its type, default,
//! allowed values and meaning, read from the code so that the list cannot drift from it.
//! Keys and enum values are what serde accepts (its own error messages name them); required
//! keys are the ones serde reports missing; defaults are a spec of only the required keys,
//! serialized back; allowed values are the rules `validate` applies; meanings are the `///`
//! comments of the fields in spec.rs.

use crate::pipeline::spec::{self, Spec};
use crate::UserError;
use anyhow::{anyhow, Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use toml::{Table, Value};

/// The declarations whose `///` comments are the meanings: the spec, and the data formats
/// it names.
const SOURCES: [&str; 2] = [include_str!("spec.rs"), include_str!("../kinds/load.rs")];

/// A key no setting has and a value no enum has: serde's complaint about them lists the
/// keys and values it would have accepted.
const UNKNOWN: &str = "\u{1}";

#[derive(Clone, Debug, Serialize)]
pub struct Section {
    pub name: String,
    /// Whether a pipeline file must have the section.
    pub required: bool,
    pub meaning: String,
    /// Rules on the section as a whole.
    pub allowed: Vec<String>,
    pub keys: Vec<Setting>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Setting {
    /// `section.key`, as `--set` takes it.
    pub key: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// No default: a file that has the section must set it.
    pub required: bool,
    /// What an unwritten key is; none for a required key and an unset optional one.
    pub default: Option<Value>,
    pub meaning: String,
    pub allowed: Vec<String>,
}

#[derive(clap::Args)]
pub struct Args {
    /// Only the keys that start with this, e.g. `train` or `synthesize.stop`.
    prefix: Option<String>,
    /// One JSON document instead of text.
    #[arg(long)]
    json: bool,
    /// Markdown, as in docs/settings.md.
    #[arg(long, conflicts_with = "json")]
    markdown: bool,
}

pub fn run(a: &Args) -> Result<()> {
    let mut sections = sections()?;
    if let Some(prefix) = &a.prefix {
        sections.retain_mut(|s| {
            s.keys.retain(|k| k.key.starts_with(prefix.as_str()));
            !s.keys.is_empty() || s.name.starts_with(prefix.as_str())
        });
        if sections.is_empty() {
            return Err(UserError(format!("no setting starts with `{prefix}`; `pipe settings` lists them all")).into());
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "sections": sections }))?);
    } else if a.markdown {
        print!("{}", markdown(&sections));
    } else {
        print!("{}", text(&sections));
    }
    Ok(())
}

/// Every section of a pipeline file with its keys, in the order of the code.
pub fn sections() -> Result<Vec<Section>> {
    let decls: Vec<Decl> = SOURCES.iter().flat_map(|s| declarations(s)).collect();
    let find = |name: &str| decls.iter().find(|d| d.name == name);
    let top = find("Spec").context("spec.rs declares no `struct Spec`")?;
    let mut sections = Vec::new();
    let mut kinds = Vec::new();
    for name in accepted_fields(None) {
        let field = top.member(&name)?;
        let mut keys = Vec::new();
        let mut section_kinds = Vec::new();
        let names = accepted_fields(Some(&name));
        if !names.is_empty() {
            let ty = unwrap_type(&field.ty, "Option<");
            let decl = find(ty).with_context(|| format!("no `struct {ty}` (the [{name}] section) in spec.rs"))?;
            for key in names {
                let member = decl.member(&key)?;
                let kind = Kind::of(&member.ty, &enum_values(&name, &key)).with_context(|| format!("{name}.{key}: no setting type for `{}`", member.ty))?;
                let meaning = with_value_docs(&member.doc, &member.ty, &kind, &find);
                keys.push(Setting { key: format!("{name}.{key}"), kind: kind.name(), required: false, default: None, meaning, allowed: Vec::new() });
                section_kinds.push(kind);
            }
        }
        sections.push(Section { name, required: false, meaning: field.doc.clone(), allowed: Vec::new(), keys });
        kinds.push(section_kinds);
    }
    let minimal = fill_required(&mut sections, &kinds)?;
    let written = Value::try_from(probe(&minimal).map_err(|m| anyhow!("a spec of only the required keys: {m}"))?)?;
    for s in &mut sections {
        for k in s.keys.iter_mut().filter(|k| !k.required) {
            let (_, key) = k.key.split_once('.').unwrap_or_default();
            k.default = written.get(&s.name).and_then(|t| t.get(key)).cloned();
        }
        let mut without = minimal.clone();
        without.remove(&s.name);
        s.required = matches!(probe(&without), Err(m) if missing(&m) == Some(s.name.as_str()));
    }
    add_rules(&mut sections, &kinds, minimal)?;
    Ok(sections)
}

/// Gives each required key a value until the spec parses, marking it required; returns that
/// spec of only the required keys.
fn fill_required(sections: &mut [Section], kinds: &[Vec<Kind>]) -> Result<Table> {
    let mut minimal = Table::new();
    for (s, kinds) in sections.iter_mut().zip(kinds).filter(|(s, _)| !s.keys.is_empty()) {
        let mut table = Table::new();
        // alone in the spec, the section's own missing keys are reported before the spec's
        while let Err(m) = probe(&Table::from_iter([(s.name.clone(), Value::Table(table.clone()))])) {
            let Some(i) = missing(&m).and_then(|key| s.keys.iter().position(|k| k.key == format!("{}.{key}", s.name))) else { break };
            if s.keys[i].required {
                return Err(anyhow!("{}: reported missing once given", s.keys[i].key));
            }
            s.keys[i].required = true;
            table.insert(s.keys[i].key[s.name.len() + 1..].to_string(), kinds[i].example());
        }
        minimal.insert(s.name.clone(), Value::Table(table));
    }
    Ok(minimal)
}

/// The allowed values of each key and section: the rules `validate` applies, gathered from
/// a spec with every key set. A rule that differs with the value of an enum key (the range
/// of `attack.eps` with `attack.eps_unit`) is listed for each of its values.
fn add_rules(sections: &mut [Section], kinds: &[Vec<Kind>], minimal: Table) -> Result<()> {
    let mut full = minimal;
    for (s, kinds) in sections.iter().zip(kinds) {
        for (k, kind) in s.keys.iter().zip(kinds).filter(|(k, _)| !k.required && k.default.is_none()) {
            set(&mut full, &k.key, kind.example());
        }
    }
    let rules_with = |key: &str, value: Value| -> Option<BTreeMap<String, Vec<String>>> {
        let mut t = full.clone();
        set(&mut t, key, value);
        probe(&t).ok().map(|spec| rules(&spec))
    };
    let base = rules(&probe(&full).map_err(|m| anyhow!("a spec with every key set: {m}"))?);
    let mut allowed = base.clone();
    for (s, kinds) in sections.iter().zip(kinds) {
        for (k, kind) in s.keys.iter().zip(kinds) {
            let per_value: Vec<(&String, BTreeMap<String, Vec<String>>)> = kind.values().iter().filter_map(|v| Some((v, rules_with(&k.key, Value::String(v.clone()))?))).collect();
            let keys: std::collections::BTreeSet<&String> = per_value.iter().flat_map(|(_, r)| r.keys()).collect();
            for ruled in keys.into_iter().filter(|r| per_value.iter().any(|(_, rules)| rules.get(*r) != base.get(*r))) {
                let of = |rules: &BTreeMap<String, Vec<String>>| rules.get(ruled).cloned().unwrap_or_default();
                let common: Vec<String> = of(&per_value[0].1).into_iter().filter(|r| per_value.iter().all(|(_, rules)| of(rules).contains(r))).collect();
                let mut list = common.clone();
                for (v, rules) in &per_value {
                    let own: Vec<String> = of(rules).into_iter().filter(|r| !common.contains(r)).collect();
                    if !own.is_empty() {
                        list.push(format!("with `{} = {}`: {}", k.key, Value::String(v.to_string()), own.join("; ")));
                    }
                }
                allowed.insert(ruled.clone(), list);
            }
        }
    }
    for (ruled, list) in allowed {
        let target = sections.iter_mut().find_map(|s| if s.name == ruled { Some(&mut s.allowed) } else { s.keys.iter_mut().find(|k| k.key == ruled).map(|k| &mut k.allowed) });
        *target.ok_or_else(|| anyhow!("validation has a rule on `{ruled}`, which is no setting"))? = list;
    }
    Ok(())
}

/// What each rule of `validate` expects, by key, in the order it checks them.
fn rules(spec: &Spec) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    spec::rules(spec, &mut |_, key, expected| {
        let list = out.entry(key.to_string()).or_default();
        if !list.iter().any(|e| e == expected) {
            list.push(expected.to_string());
        }
    });
    out
}

fn set(table: &mut Table, key: &str, value: Value) {
    let (section, key) = key.split_once('.').unwrap_or_default();
    if let Some(Value::Table(t)) = table.get_mut(section) {
        t.insert(key.to_string(), value);
    }
}

/// `table` as a spec, or serde's message.
fn probe(table: &Table) -> std::result::Result<Spec, String> {
    Value::Table(table.clone()).try_into::<Spec>().map_err(|e| e.message().to_string())
}

/// The key serde reports missing.
fn missing(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

/// The names a serde message lists after "expected": `a`, `b` or `c` (derived messages),
/// or "a" or "b" (the hand-written one of `attack.eps_unit`).
fn expected_names(message: &str) -> Vec<String> {
    let Some((_, list)) = message.split_once("expected") else { return Vec::new() };
    let quote = if list.contains('`') { '`' } else { '"' };
    list.split(quote).skip(1).step_by(2).map(str::to_string).collect()
}

/// The keys serde accepts at the top of a spec or in `section`, in declaration order.
fn accepted_fields(section: Option<&str>) -> Vec<String> {
    let mut t = Table::from_iter([(UNKNOWN.to_string(), Value::Integer(0))]);
    if let Some(s) = section {
        t = Table::from_iter([(s.to_string(), Value::Table(t))]);
    }
    probe(&t).err().map(|m| if m.starts_with("unknown field") { expected_names(&m) } else { Vec::new() }).unwrap_or_default()
}

/// The values serde accepts for `section.key` if it is an enum, in declaration order.
fn enum_values(section: &str, key: &str) -> Vec<String> {
    let t = Table::from_iter([(section.to_string(), Value::Table(Table::from_iter([(key.to_string(), Value::from(UNKNOWN))])))]);
    probe(&t).err().map(|m| expected_names(&m)).unwrap_or_default()
}

fn unwrap_type<'a>(ty: &'a str, wrapper: &str) -> &'a str {
    ty.strip_prefix(wrapper).and_then(|t| t.strip_suffix('>')).unwrap_or(ty)
}

/// A field's doc, followed by the docs of its enum's values where the enum is declared in
/// the sources (matched by position: serde lists values in declaration order).
fn with_value_docs<'a>(doc: &str, ty: &str, kind: &Kind, find: &dyn Fn(&str) -> Option<&'a Decl>) -> String {
    let mut text = doc.to_string();
    let values = kind.values();
    if let Some(decl) = find(unwrap_type(ty, "Option<")).filter(|d| d.members.len() == values.len()) {
        for (v, m) in values.iter().zip(&decl.members).filter(|(_, m)| !m.doc.is_empty()) {
            text = format!("{text} `{v}`: {}", m.doc);
        }
    }
    text.trim().to_string()
}

/// The type of a setting as it is written in a pipeline file.
#[derive(Clone, Debug, PartialEq)]
enum Kind {
    Integer,
    Number,
    Boolean,
    Text,
    Path,
    OneOf(Vec<String>),
    Optional(Box<Kind>),
    List(Box<Kind>),
    Array(Box<Kind>, usize),
}

impl Kind {
    /// The kind of Rust type `ty`; `values` are serde's names if it is an enum.
    fn of(ty: &str, values: &[String]) -> Option<Kind> {
        let inner = |wrapper: &str| ty.strip_prefix(wrapper).and_then(|t| t.strip_suffix('>'));
        Some(match ty {
            "u8" | "u16" | "u32" | "u64" | "usize" => Kind::Integer,
            "f32" | "f64" => Kind::Number,
            "bool" => Kind::Boolean,
            "String" => Kind::Text,
            "PathBuf" => Kind::Path,
            _ if inner("Option<").is_some() => Kind::Optional(Box::new(Kind::of(inner("Option<")?, values)?)),
            _ if inner("Vec<").is_some() => Kind::List(Box::new(Kind::of(inner("Vec<")?, values)?)),
            _ if ty.starts_with('[') => {
                let (item, n) = ty.strip_prefix('[')?.strip_suffix(']')?.split_once(';')?;
                Kind::Array(Box::new(Kind::of(item.trim(), values)?), n.trim().parse().ok()?)
            }
            _ if !values.is_empty() => Kind::OneOf(values.to_vec()),
            _ => return None,
        })
    }

    fn name(&self) -> String {
        match self {
            Kind::Integer => "integer".into(),
            Kind::Number => "number".into(),
            Kind::Boolean => "boolean".into(),
            Kind::Text => "string".into(),
            Kind::Path => "path".into(),
            Kind::OneOf(values) => format!("one of {}", values.join("|")),
            Kind::Optional(k) => format!("optional {}", k.name()),
            Kind::List(k) => format!("[{}, ...]", k.name()),
            Kind::Array(k, n) => format!("[{}]", vec![k.name(); *n].join(", ")),
        }
    }

    /// A value of this type (in range or not) to stand for a key that has none.
    fn example(&self) -> Value {
        match self {
            Kind::Integer => Value::Integer(0),
            Kind::Number => Value::Float(0.0),
            Kind::Boolean => Value::Boolean(false),
            Kind::Text | Kind::Path => Value::from(""),
            Kind::OneOf(values) => Value::from(values[0].as_str()),
            Kind::Optional(k) => k.example(),
            Kind::List(_) => Value::Array(Vec::new()),
            Kind::Array(k, n) => Value::Array(vec![k.example(); *n]),
        }
    }

    /// The values of an enum (optional or not); none for other types.
    fn values(&self) -> &[String] {
        match self {
            Kind::OneOf(values) => values,
            Kind::Optional(k) => k.values(),
            _ => &[],
        }
    }
}

/// A struct or an enum of a source file: its fields or variants, in order.
#[derive(Debug, PartialEq)]
struct Decl {
    name: String,
    members: Vec<Member>,
}

/// A field (with its type as written) or a variant (no type), with its `///` text as one
/// paragraph.
#[derive(Debug, PartialEq)]
struct Member {
    name: String,
    ty: String,
    doc: String,
}

impl Decl {
    fn member(&self, name: &str) -> Result<&Member> {
        self.members.iter().find(|m| m.name == name).ok_or_else(|| anyhow!("serde accepts `{name}`, which `{}` in the source does not declare", self.name))
    }
}

/// The structs and enums declared in `src`, one member a line; attributes and plain comments
/// between a `///` comment and its item are skipped.
fn declarations(src: &str) -> Vec<Decl> {
    let mut out = Vec::new();
    let mut doc: Vec<&str> = Vec::new();
    let mut open: Option<Decl> = None;
    for line in src.lines().map(str::trim) {
        if let Some(d) = line.strip_prefix("///") {
            doc.push(d.trim());
            continue;
        }
        if line.is_empty() || line.starts_with("#[") || line.starts_with("//") {
            continue;
        }
        let text = doc.join(" ");
        doc.clear();
        match &mut open {
            None => open = declared(line).map(|name| Decl { name, members: Vec::new() }),
            Some(_) if line.starts_with('}') => out.extend(open.take()),
            Some(decl) => {
                let member = unpub(line).trim_end_matches(',');
                let (name, ty) = member.split_once(':').unwrap_or((member, ""));
                let name = name.split(['(', ' ', '{']).next().unwrap_or_default();
                decl.members.push(Member { name: name.to_string(), ty: ty.trim().to_string(), doc: text });
            }
        }
    }
    out
}

/// A declaration without its `pub` or `pub(...)`.
fn unpub(line: &str) -> &str {
    match line.strip_prefix("pub") {
        Some(rest) if rest.starts_with([' ', '(']) => rest.split_once(' ').map_or(rest, |(_, r)| r.trim_start()),
        _ => line,
    }
}

/// The name of a struct or enum whose body starts on this line.
fn declared(line: &str) -> Option<String> {
    let rest = unpub(line);
    let rest = rest.strip_prefix("struct ").or_else(|| rest.strip_prefix("enum "))?;
    let name = rest.strip_suffix('{')?.split('<').next()?.trim();
    Some(name.to_string())
}

fn shown_default(k: &Setting) -> String {
    match (&k.default, k.required) {
        (_, true) => "required".into(),
        (Some(v), _) => v.to_string(),
        (None, _) => "none".into(),
    }
}

/// Lines of at most `width` characters (a longer word stands alone), each after `indent`.
fn wrap(text: &str, indent: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && indent.len() + line.len() + 1 + word.len() > width {
            out += &format!("{indent}{line}\n");
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line += word;
    }
    if !line.is_empty() {
        out += &format!("{indent}{line}\n");
    }
    out
}

fn text(sections: &[Section]) -> String {
    let mut out = String::new();
    for s in sections {
        out += &format!("[{}]{}\n", s.name, if s.required { "  (required section)" } else { "" });
        out += &wrap(&s.meaning, "    ", 92);
        if !s.allowed.is_empty() {
            out += &wrap(&format!("allowed: {}", s.allowed.join("; ")), "    ", 92);
        }
        for k in &s.keys {
            out += &format!("  {} = {}  ({})\n", k.key, shown_default(k), k.kind);
            out += &wrap(&k.meaning, "      ", 92);
            if !k.allowed.is_empty() {
                out += &wrap(&format!("allowed: {}", k.allowed.join("; ")), "      ", 92);
            }
        }
        out += "\n";
    }
    out
}

fn markdown(sections: &[Section]) -> String {
    let cell = |s: &str| s.replace('|', "\\|");
    let mut out = String::from(
        "# Pipeline settings\n\n\
         Every key of a pipeline file, as written in its `[section]` or given as `--set section.key=value`.\n\
         Generated by `pipe settings --markdown` from the code: keys, types and defaults from what\n\
         `src/pipeline/spec.rs` parses, meanings from its doc comments, allowed values from its\n\
         validation rules. `tests/settings.rs` fails when this file differs from what the code generates\n\
         (`PIPE_BLESS=1 cargo test --release --test settings` rewrites it).\n",
    );
    for s in sections {
        out += &format!("\n## [{}]{}\n\n{}\n", s.name, if s.required { " (required)" } else { "" }, s.meaning);
        if !s.allowed.is_empty() {
            out += &format!("\nAllowed: {}.\n", s.allowed.join("; "));
        }
        if s.keys.is_empty() {
            continue;
        }
        out += "\n| key | type | default | meaning |\n| --- | --- | --- | --- |\n";
        for k in &s.keys {
            let default = if k.required || k.default.is_none() { shown_default(k) } else { format!("`{}`", shown_default(k)) };
            let allowed = if k.allowed.is_empty() { String::new() } else { format!(" Allowed: {}.", k.allowed.join("; ")) };
            out += &format!("| `{}` | {} | {} | {}{} |\n", k.key, cell(&k.kind), cell(&default), cell(&k.meaning), cell(&allowed));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declarations_keep_docs_types_and_order_past_attributes_and_comments() {
        let src = r#"
/// Not a member.
#[derive(Deserialize)]
pub(crate) struct Outer {
    /// First line
    /// and second.
    #[serde(default = "d")]
    pub a: Option<[f64; 2]>,
    // a plain comment is no doc
    pub(super) b: Vec<String>,
    public: bool,
}
fn d() -> Option<[f64; 2]> {
    None
}
#[serde(untagged)]
enum E {
    /// One.
    #[serde(rename = "[-1,1]")]
    One,
    Two(String),
}
"#;
        let d = declarations(src);
        let m = |name: &str, ty: &str, doc: &str| Member { name: name.into(), ty: ty.into(), doc: doc.into() };
        assert_eq!(d, vec![
            Decl { name: "Outer".into(), members: vec![m("a", "Option<[f64; 2]>", "First line and second."), m("b", "Vec<String>", ""), m("public", "bool", "")] },
            Decl { name: "E".into(), members: vec![m("One", "", "One."), m("Two", "", "")] },
        ]);
        let kind = Kind::of("Option<[f64; 2]>", &[]).unwrap();
        assert_eq!((kind.name(), kind.example().to_string()), ("optional [number, number]".to_string(), "[0.0, 0.0]".to_string()));
        assert_eq!(Kind::of("Option<Sampling>", &["union".into(), "balanced".into()]).unwrap().name(), "optional one of union|balanced");
        assert_eq!(Kind::of("Sampling", &[]), None);
    }

    #[test]
    fn serde_messages_name_what_is_accepted() {
        assert_eq!(expected_names("unknown variant `\u{1}`, expected one of `sgd`, `adam`"), ["sgd", "adam"]);
        assert_eq!(expected_names("unknown field `\u{1}`, expected `batch_size`"), ["batch_size"]);
        assert_eq!(expected_names("expected \"[-1,1]\" or \"[0,1]\" (the pixel range)"), ["[-1,1]", "[0,1]"]);
        assert!(expected_names("invalid type: string \"\u{1}\", expected u32").is_empty());
        assert_eq!(missing("missing field `rounds`"), Some("rounds"));
    }

    /// Every key a real spec writes is listed, and each listed key has a type and a meaning.
    #[test]
    fn every_key_a_spec_writes_is_listed_with_a_meaning() {
        let sections = sections().unwrap();
        let listed: Vec<&Setting> = sections.iter().flat_map(|s| &s.keys).collect();
        for k in &listed {
            assert!(!k.meaning.is_empty(), "{}: no `///` comment in spec.rs", k.key);
        }
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/quickstart.toml");
        let with_attack = ["attack.eps=0.1", "attack.eps_unit=[0,1]", "pipeline.patience=2", "train.lr_drop_round=1", "net.norm=batch", "attack.clip=[0,1]", "attack.step_size=0.01", "data.texture=brick", "probe.labels=100", "igm.negative_size=96"].map(String::from);
        let mut spec = spec::load(&file, &with_attack).unwrap().spec;
        // generative runs only, which the quickstart is not: the keys are listed all the same
        spec.quality = Some(Default::default());
        let Value::Table(written) = Value::try_from(&spec).unwrap() else { panic!("a table") };
        let mut leaves = 0;
        for (section, t) in &written {
            for key in t.as_table().unwrap().keys() {
                let key = format!("{section}.{key}");
                assert!(listed.iter().any(|k| k.key == key), "{key} is written but not listed");
                leaves += 1;
            }
        }
        assert_eq!(leaves, listed.len(), "with every optional key set, the spec writes every listed key");
    }
}
