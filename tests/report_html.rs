//! `pipe report --html` on a real store: two seeds of a tiny pipeline and a tiny sweep
//! with a two-way attack. The site is self-contained (every link resolves inside it), its
//! numbers are those of `pipe export`, its pictures are the stored objects byte for byte,
//! its lineage table is `pipe lineage`'s, a folder that is not a report is refused, and the
//! same store renders to the same bytes.

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, UInt32Type, UInt64Type};
use arrow_array::Array;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

mod common;
use common::{files_under, object, pipe, run, small, text};

struct Fixture {
    dir: tempfile::TempDir,
    store: PathBuf,
}

/// One store for every test: runs take most of the time.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let file = small(dir.path(), 2);
        run(&file, &store, &[]);
        run(&file, &store, &["pipeline.seed=8"]);
        let sweep = dir.path().join("sweep.toml");
        let base = std::fs::read_to_string(&file).unwrap().replace("name = \"tiny\"", "name = \"tinysweep\"").replace("rounds = 2", "rounds = 1");
        let extra = "\n[attack]\neps = 0.25\neps_unit = \"[-1,1]\"\ncompare = [\"baseline\", \"icn\"]\n\n[sweep]\n\"pipeline.seed\" = [7, 8]\ncases = [\n  { name = \"baseline\", \"pipeline.method\" = \"baseline\" },\n  { name = \"icn\", \"pipeline.method\" = \"icn\" },\n]\n";
        std::fs::write(&sweep, base + extra).unwrap();
        run(&sweep, &store, &[]);
        Fixture { dir, store }
    })
}

fn report(store: &Path, dir: &Path, extra: &[&str]) -> Output {
    pipe().arg("report").arg("--html").arg(dir).arg("--store").arg(store).args(extra).output().unwrap()
}

/// Renders the fixture's store into a new folder of the fixture's temp dir.
fn render(name: &str) -> PathBuf {
    let f = fixture();
    let site = f.dir.path().join(name);
    let out = report(&f.store, &site, &[]);
    assert!(out.status.success(), "{}", text(&out));
    site
}

fn records(store: &Path) -> Vec<Value> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(store.join("runs")).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    paths.iter().map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()).collect()
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&#39;", "'").replace("&amp;", "&")
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

/// Every value of attribute `name` in a page.
fn attr_values(html: &str, name: &str) -> Vec<String> {
    let pat = format!(" {name}=\"");
    html.match_indices(&pat).map(|(i, _)| {
        let rest = &html[i + pat.len()..];
        unescape(&rest[..rest.find('"').unwrap()])
    }).collect()
}

/// The rows of the table with id `id`: the `<tr>` attributes and the cells' text.
fn table_rows(html: &str, id: &str) -> Vec<(String, Vec<String>)> {
    let start = html.find(&format!("<table id=\"{id}\">")).unwrap_or_else(|| panic!("no table {id}"));
    let body = &html[start..start + html[start..].find("</table>").unwrap()];
    body.split("<tr").skip(2) // the table tag, the header row
        .map(|row| {
            let attrs = row[..row.find('>').unwrap()].to_string();
            let cells = row.split("<td").skip(1).map(|c| {
                let c = &c[c.find('>').unwrap() + 1..c.find("</td>").unwrap()];
                // the text of the cell, without tags
                let mut out = String::new();
                let mut in_tag = false;
                for ch in c.chars() {
                    match ch {
                        '<' => in_tag = true,
                        '>' => in_tag = false,
                        ch if !in_tag => out.push(ch),
                        _ => {}
                    }
                }
                unescape(&out)
            }).collect();
            (attrs, cells)
        })
        .collect()
}

fn row<'a>(rows: &'a [(String, Vec<String>)], attrs: &str) -> &'a [String] {
    &rows.iter().find(|(a, _)| a.trim() == attrs.trim()).unwrap_or_else(|| panic!("no row with {attrs} in {rows:?}")).1
}

/// Mean and sample sd as the pages show them: `m ± sd` (two or more values) or `m`.
fn shown(xs: &[f64]) -> String {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return format!("{mean:.2}");
    }
    let sd = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    format!("{mean:.2} ± {sd:.2}")
}

#[test]
fn pages_exist_and_every_link_stays_inside_the_site() {
    let f = fixture();
    let site = render("links");
    for page in ["index.html", "pipelines/tiny.html", "pipelines/tinysweep.html"] {
        assert!(site.join(page).is_file(), "{page}");
    }
    let recs = records(&f.store);
    assert_eq!(recs.len(), 2 + 4 + 1, "two runs, four members, one two-way record");
    for r in &recs {
        assert!(site.join(format!("runs/{}.html", r["id"].as_str().unwrap())).is_file(), "{}", r["id"]);
    }
    let site_root = site.canonicalize().unwrap();
    let store_root = f.store.canonicalize().unwrap();
    let (mut images, mut links) = (0, 0);
    for file in files_under(&site).into_iter().filter(|p| p.extension().is_some_and(|e| e == "html")) {
        let html = std::fs::read_to_string(&file).unwrap();
        assert!(!html.contains("<script"), "{}: no scripts", file.display());
        for (attr, value) in attr_values(&html, "src").into_iter().map(|v| ("src", v)).chain(attr_values(&html, "href").into_iter().map(|v| ("href", v))) {
            assert!(!value.contains("://") && !value.starts_with('/'), "{}: {attr}={value} is not a relative link", file.display());
            let target = file.parent().unwrap().join(&value).canonicalize().unwrap_or_else(|e| panic!("{}: {attr}={value} dangles: {e}", file.display()));
            assert!(target.starts_with(&site_root) && !target.starts_with(&store_root), "{}: {attr}={value} leaves the site", file.display());
            if attr == "src" { images += 1 } else { links += 1 }
        }
    }
    assert!(images > 0 && links > recs.len(), "{images} images, {links} links");
}

/// The export's rows as (run, setting, stage, kind, round, class, metric, value, cached).
type ExportRow = (String, String, Option<u64>, String, String, Option<u32>, Option<u32>, String, f64, Option<bool>);

fn export(store: &Path, out: &Path) -> Vec<ExportRow> {
    let o = pipe().arg("export").arg("--out").arg(out).arg("--store").arg(store).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let mut rows = Vec::new();
    for b in pipe::engine::table::read_parquet(std::fs::read(out).unwrap()).unwrap() {
        let s = |n: &str| b.column_by_name(n).unwrap().as_string::<i32>().clone();
        let (run, setting, stage, kind, metric, pipeline) = (s("run"), s("setting"), s("stage"), s("kind"), s("metric"), s("pipeline"));
        let seed = b.column_by_name("seed").unwrap().as_primitive::<UInt64Type>().clone();
        let round = b.column_by_name("round").unwrap().as_primitive::<UInt32Type>().clone();
        let class = b.column_by_name("class").unwrap().as_primitive::<UInt32Type>().clone();
        let value = b.column_by_name("value").unwrap().as_primitive::<Float64Type>().clone();
        let cached = b.column_by_name("cached").unwrap().as_boolean().clone();
        for i in 0..b.num_rows() {
            let opt = |a: &dyn Array| !a.is_null(i);
            rows.push((
                format!("{}\u{0}{}", pipeline.value(i), run.value(i)),
                setting.value(i).to_string(),
                opt(&seed).then(|| seed.value(i)),
                stage.value(i).to_string(),
                kind.value(i).to_string(),
                opt(&round).then(|| round.value(i)),
                opt(&class).then(|| class.value(i)),
                metric.value(i).to_string(),
                value.value(i),
                opt(&cached).then(|| cached.value(i)),
            ));
        }
    }
    rows
}

#[test]
fn the_numbers_are_those_of_pipe_export() {
    let f = fixture();
    let site = render("numbers");
    let rows = export(&f.store, &f.dir.path().join("metrics.parquet"));
    let recs = records(&f.store);
    for pipeline in ["tiny", "tinysweep"] {
        let html = std::fs::read_to_string(site.join(format!("pipelines/{pipeline}.html"))).unwrap();
        let mine: Vec<&ExportRow> = rows.iter().filter(|r| r.0.split('\u{0}').next() == Some(pipeline)).collect();
        // every run here is ok and the only one of its (setting, seed): all are counted
        let ok: Vec<&Value> = recs.iter().filter(|r| r["pipeline"] == pipeline).collect();
        assert!(ok.iter().all(|r| r["status"] == "ok"));
        let mut per_round: BTreeMap<(String, u32), (Vec<f64>, Vec<f64>)> = BTreeMap::new();
        let mut selected: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for r in &mine {
            match (r.4.as_str(), r.7.as_str(), r.6) {
                ("evaluate", "test_error", None) => per_round.entry((r.1.clone(), r.5.unwrap())).or_default().1.push(100.0 * r.8),
                ("evaluate", "validation_error", None) => per_round.entry((r.1.clone(), r.5.unwrap())).or_default().0.push(100.0 * r.8),
                ("", "selected_test_error", _) => selected.entry(r.1.clone()).or_default().push(100.0 * r.8),
                _ => {}
            }
        }
        let errors = table_rows(&html, "errors");
        assert_eq!(errors.len(), per_round.len(), "{pipeline}: a row per setting and round");
        for ((setting, round), (val, test)) in &per_round {
            let cells = row(&errors, &format!(r#"data-setting="{}" data-round="{round}""#, escape(setting)));
            assert_eq!(cells[2..], [test.len().to_string(), shown(test), shown(val)], "{pipeline} {setting} round {round}");
        }
        let sel = table_rows(&html, "selected");
        assert_eq!(sel.len(), selected.len());
        for (setting, test) in &selected {
            let cells = row(&sel, &format!(r#"data-setting="{}""#, escape(setting)));
            assert_eq!((cells[1].clone(), cells[4].clone()), (test.len().to_string(), shown(test)), "{pipeline} {setting}");
        }
        // time per kind: seconds of the stages that ran, all runs of the pipeline
        let mut time: BTreeMap<String, (u32, u32, f64)> = BTreeMap::new();
        for r in mine.iter().filter(|r| r.7 == "seconds" && !r.3.is_empty()) {
            let t = time.entry(r.4.clone()).or_default();
            if r.9 == Some(true) {
                t.1 += 1;
            } else {
                t.0 += 1;
                t.2 += r.8;
            }
        }
        let shown_time = table_rows(&html, "time");
        assert_eq!(shown_time.len(), time.len());
        for (kind, (ran, cached, seconds)) in &time {
            let cells = row(&shown_time, &format!(r#"data-kind="{kind}""#));
            assert_eq!(cells[1..], [ran.to_string(), cached.to_string(), format!("{seconds:.2}")], "{pipeline} {kind}");
        }
    }
    // the sweep's two-way table: adversarial error of each attacked case over its seeds
    let html = std::fs::read_to_string(site.join("pipelines/tinysweep.html")).unwrap();
    let two_way = recs.iter().find(|r| r["pipeline"] == "tinysweep:two-way").unwrap();
    let shown_rows = table_rows(&html, "two-way");
    for case in ["baseline", "icn"] {
        let errs: Vec<f64> = two_way["stages"].as_array().unwrap().iter().filter(|s| s["summary"]["attacked"] == case).map(|s| 100.0 * s["summary"]["adversarial_error"].as_f64().unwrap()).collect();
        assert_eq!(errs.len(), 2);
        let cells = row(&shown_rows, &format!(r#"data-attacked="{case}""#));
        assert_eq!((cells[3].clone(), cells[4].clone()), ("2".to_string(), shown(&errs)), "{case}");
    }
}

#[test]
fn pictures_are_copies_of_the_stored_objects() {
    let f = fixture();
    let site = render("pictures");
    let mut checked = 0;
    for r in records(&f.store) {
        let page = std::fs::read_to_string(site.join(format!("runs/{}.html", r["id"].as_str().unwrap()))).unwrap();
        for s in r["stages"].as_array().unwrap() {
            for output in ["grid.png", "examples.png"] {
                let Some(d) = s["outputs"][output]["digest"].as_str() else { continue };
                let copy = site.join(format!("img/{d}.png"));
                assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(object(&f.store, d)).unwrap(), "{}", copy.display());
                assert!(page.contains(&format!("src=\"../img/{d}.png\"")), "{} shows its {output}", r["id"]);
                checked += 1;
            }
        }
    }
    assert!(checked >= 2 * 2 + 2 * 2 + 4, "{checked}");
}

#[test]
fn a_run_page_lists_the_lineage_of_its_selected_checkpoint() {
    let f = fixture();
    let site = render("lineage");
    let rec = records(&f.store).into_iter().find(|r| r["pipeline"] == "tiny").unwrap();
    let (id, ck) = (rec["id"].as_str().unwrap(), rec["selected"]["checkpoint"].as_str().unwrap());
    let out = f.dir.path().join("lineage.parquet");
    let o = pipe().arg("lineage").arg(ck).arg("--format").arg("parquet").arg("--out").arg(&out).arg("--store").arg(&f.store).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let file = format!("runs/{id}.lineage-{}.parquet", &ck[..12]);
    assert_eq!(std::fs::read(site.join(&file)).unwrap(), std::fs::read(&out).unwrap());
    let page = std::fs::read_to_string(site.join(format!("runs/{id}.html"))).unwrap();
    assert!(page.contains(&format!("href=\"../{file}\"")));
    // the chain up to the selected round, and 3 pseudo-negatives per class from each of its
    // rounds after the first
    let round = rec["selected"]["round"].as_u64().unwrap() as usize;
    assert_eq!(table_rows(&page, "chain").len(), round + 1);
    if round == 0 {
        assert!(!page.contains("<table id=\"lineage\">"));
    } else {
        assert_eq!(table_rows(&page, "lineage").len(), 3 * 10 * round);
    }
}

#[test]
fn a_folder_that_is_not_a_report_is_refused_and_an_earlier_report_replaced() {
    let f = fixture();
    let parent = f.dir.path().join("refuse");
    std::fs::create_dir_all(parent.join("mine")).unwrap();
    std::fs::write(parent.join("mine/notes.txt"), "mine").unwrap();
    std::fs::write(parent.join("a-file"), "mine too").unwrap();
    for target in ["mine", "a-file"] {
        let before = files_under(&parent);
        let out = report(&f.store, &parent.join(target), &[]);
        assert_eq!(out.status.code(), Some(2), "{target}: {}", text(&out));
        assert_eq!(files_under(&parent), before, "{target}: nothing written");
        assert_eq!(std::fs::read_dir(&parent).unwrap().count(), 2, "{target}: no temp folder left");
    }
    assert_eq!(std::fs::read_to_string(parent.join("mine/notes.txt")).unwrap(), "mine");

    // an earlier report is replaced whole: a file it no longer writes is gone
    let site = parent.join("site");
    assert!(report(&f.store, &site, &[]).status.success());
    std::fs::write(site.join("stale.html"), "old").unwrap();
    let out = report(&f.store, &site, &["--pipeline", "tiny"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!site.join("stale.html").exists() && !site.join("pipelines/tinysweep.html").exists() && site.join("pipelines/tiny.html").is_file());
    // an unknown pipeline is bad input, and leaves the report as it was
    let before: Vec<(PathBuf, Vec<u8>)> = files_under(&site).into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect();
    let out = report(&f.store, &site, &["--pipeline", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let after: Vec<(PathBuf, Vec<u8>)> = files_under(&site).into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect();
    assert!(before == after);
    assert_eq!(std::fs::read_dir(&parent).unwrap().count(), 3, "no temp folder left");
}

#[test]
fn the_same_store_renders_the_same_bytes() {
    let (a, b) = (render("twice-a"), render("twice-b"));
    let files = |d: &Path| -> Vec<(PathBuf, Vec<u8>)> { files_under(d).into_iter().map(|p| (p.strip_prefix(d).unwrap().to_path_buf(), std::fs::read(&p).unwrap())).collect() };
    let (fa, fb) = (files(&a), files(&b));
    assert!(fa.len() > 10, "{}", fa.len());
    assert_eq!(fa.iter().map(|f| &f.0).collect::<Vec<_>>(), fb.iter().map(|f| &f.0).collect::<Vec<_>>());
    for ((p, x), (_, y)) in fa.iter().zip(&fb) {
        assert!(x == y, "{} differs between two renders", p.display());
    }
}
