//! Style transfer through the binary (IGM §5.1): a tiny IGM texture cascade on 16x16 crops
//! of the shipped brick, then `pipe stylize` of a real photograph with it: the PNG has the
//! content's size, the style term rose, a = 1 keeps the content, one seed gives one image
//! (in another store too), and every bad input exits 2 having written nothing. Also the two
//! load-time bad inputs of a texture: an image smaller than a patch, a folder without it.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Output;

fn textures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/data/textures")
}

/// The content image, copied into `dir`: the shared photograph of a cat (451x300 RGB, so
/// the grey nets see its luma), required under CI; elsewhere, without the shared folder,
/// the shipped grass texture.
fn content(dir: &Path) -> PathBuf {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/images/chelsea.png");
    let (from, to) = if shared.is_file() {
        (shared, dir.join("chelsea.png"))
    } else {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{} is missing, and CI=true needs it", shared.display());
        eprintln!("note: {} not found; the content image is the shipped grass texture instead", shared.display());
        (textures().join("grass.png"), dir.join("grass.png"))
    };
    std::fs::copy(&from, &to).unwrap();
    to
}

/// A grey PNG of `h` x `w` mid-grey pixels.
fn grey_png(path: &Path, h: usize, w: usize) {
    std::fs::write(path, stages::grid::encode_grid_png(&vec![0.0; h * w], 1, 1, h, w, 1, 0).unwrap()).unwrap();
}

/// `from` copied to `to`, empty folders included.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

fn stylize(store: &Path, model: &str, content: &Path, out: &Path, args: &[&str]) -> Output {
    pipe().arg("stylize").arg(model).arg(content).arg("--out").arg(out).arg("--store").arg(store).args(args).output().unwrap()
}

/// The stylize stage of a store's newest run record.
fn stylize_stage(store: &Path) -> serde_json::Value {
    let rec = last_record(store);
    let s = rec["stages"].as_array().unwrap().iter().find(|s| s["kind"] == "stylize").unwrap_or_else(|| panic!("no stylize stage in {rec}"));
    s.clone()
}

/// The restyled image (C x H x W in [-1, 1]) of the newest stylize stage.
fn styled_values(store: &Path) -> (Vec<f32>, (usize, usize, usize)) {
    let s = stylize_stage(store);
    let bytes = std::fs::read(object(store, s["outputs"]["styled.safetensors"]["digest"].as_str().unwrap())).unwrap();
    let p = stages::codec::decode_pseudo_negatives(&bytes).unwrap();
    assert_eq!(p.classes.len(), 1);
    (p.images, p.shape)
}

#[test]
fn a_texture_cascade_restyles_a_photograph_deterministically_and_refuses_bad_input_writing_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = tiny_igm_texture(dir.path(), &textures());
    let store = dir.path().join("store");
    let out = run(&file, &store, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let run_id = last_record(&store)["id"].as_str().unwrap().to_string();
    // a second store with the same model, before any stylize stage is in either
    let other = dir.path().join("other");
    copy_dir(&store, &other);

    let content = content(dir.path());
    let (grey, h, w) = stages::data::folder::load_image(&content, 1).unwrap();
    let flags = ["--steps", "40", "--patches", "48", "--seed", "3"];
    let a_png = dir.path().join("styled/a.png");
    let o = stylize(&store, &run_id, &content, &a_png, &flags);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("(train/1, train/2)"), "the cascade restyles through both nets: {}", text(&o));
    // the PNG is the content's size, grey as the nets, and no longer the content
    let (png, ph, pw) = stages::data::folder::load_image(&a_png, 1).unwrap();
    assert_eq!((ph, pw), (h, w), "the styled PNG is not the content's size");
    assert_ne!(png, grey, "the styled image is the content");
    let (styled, shape) = styled_values(&store);
    assert_eq!(shape, (1, h, w));
    assert_eq!(png, styled.iter().map(|&v| stages::grid::unit_to_byte(v)).collect::<Vec<_>>(), "the PNG is not the stage's image");
    // the style term rose: mean Σf over one set of windows, the content's and the result's
    let s = stylize_stage(&store);
    let sum = &s["summary"];
    let (content_f, styled_f) = (sum["content_f"].as_f64().unwrap(), sum["styled_f"].as_f64().unwrap());
    assert!(styled_f > content_f, "mean Σf {content_f} -> {styled_f}: the style transfer did not raise it ({sum})");
    assert_eq!(sum["steps"].as_u64(), Some(40));
    assert!(sum["content_distance"].as_f64().unwrap() > 0.0, "{sum}");

    // one seed, one image: cached here, and remade in the other store bit for bit
    let again = stylize(&store, &run_id, &content, &dir.path().join("styled/again.png"), &flags);
    assert!(again.status.success(), "{}", text(&again));
    assert!(String::from_utf8_lossy(&again.stdout).lines().any(|l| l.starts_with("cached") && l.contains("stylize")), "{}", text(&again));
    let b_png = dir.path().join("styled/b.png");
    let o = stylize(&other, &run_id, &content, &b_png, &flags);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).lines().any(|l| l.starts_with("ran") && l.contains("stylize")), "{}", text(&o));
    let bytes = |p: &Path| std::fs::read(p).unwrap();
    assert_eq!(bytes(&a_png), bytes(&b_png), "one seed gave two images");
    assert_eq!(bytes(&a_png), bytes(&dir.path().join("styled/again.png")));
    assert_eq!(stylize_stage(&store)["outputs"], stylize_stage(&other)["outputs"]);
    // another seed draws other windows
    let c_png = dir.path().join("styled/c.png");
    let o = stylize(&store, &run_id, &content, &c_png, &["--steps", "40", "--patches", "48", "--seed", "4"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_ne!(bytes(&a_png), bytes(&c_png));

    // a = 1: the content term alone, which does not move the content
    let one = dir.path().join("styled/one.png");
    let o = stylize(&store, &run_id, &content, &one, &["--a", "1", "--steps", "10", "--patches", "48"]);
    assert!(o.status.success(), "{}", text(&o));
    let (kept, _) = styled_values(&store);
    let expected: Vec<f32> = grey.iter().map(|&b| stages::data::byte_to_unit(b)).collect();
    assert_eq!(kept.len(), expected.len());
    let worst = kept.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst <= 0.5 / 127.5, "a = 1 moved a pixel by {worst}");
    assert_eq!(stages::data::folder::load_image(&one, 1).unwrap().0, grey, "a = 1: the PNG is not the content");

    // bad input: exit 2 naming the problem, no --out, nothing new in the store
    let out = run(&small(dir.path(), 1), &store, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let icn_run = last_record(&store)["id"].as_str().unwrap().to_string();
    let not_png = dir.path().join("x.png");
    std::fs::write(&not_png, "this is text, not an image\n").unwrap();
    let tiny_png = dir.path().join("tiny.png");
    grey_png(&tiny_png, 8, 40);
    let missing = dir.path().join("nowhere.png");
    let before = files_under(&store);
    let refused = dir.path().join("refused/out.png");
    let content_s = content.to_str().unwrap();
    let round_7 = format!("{run_id}:train/7");
    let cases: Vec<(&str, Vec<&str>, Vec<String>)> = vec![
        ("a missing content file", vec![run_id.as_str(), missing.to_str().unwrap()], vec!["content image".into(), "nowhere.png".into(), "expected a PNG or JPEG".into()]),
        ("a text file named .png", vec![run_id.as_str(), not_png.to_str().unwrap()], vec!["x.png".into(), "expected a PNG or JPEG image, found".into()]),
        ("a content smaller than a patch", vec![run_id.as_str(), tiny_png.to_str().unwrap()], vec!["tiny.png".into(), "8x40".into(), "smaller than the 16x16 patches".into(), "expected at least 16x16".into()]),
        ("a content that is a folder", vec![run_id.as_str(), dir.path().to_str().unwrap()], vec!["is not a file".into()]),
        ("--a above 1", vec![run_id.as_str(), content_s, "--a", "1.5"], vec!["--a 1.5".into(), "[0, 1]".into()]),
        ("--a below 0", vec![run_id.as_str(), content_s, "--a", "-0.1"], vec!["--a -0.1".into(), "[0, 1]".into()]),
        ("--steps 0", vec![run_id.as_str(), content_s, "--steps", "0"], vec!["--steps 0".into(), "expected 1 to".into()]),
        ("--patches 0", vec![run_id.as_str(), content_s, "--patches", "0"], vec!["--patches 0".into()]),
        ("a classifier run", vec![icn_run.as_str(), content_s], vec![icn_run.clone(), "not an unsupervised WINN or IGM run".into(), "no generative model to restyle with".into()]),
        ("a run that is not there", vec!["nosuchrun", content_s], vec!["no run `nosuchrun`".into()]),
        ("a round with no net", vec![round_7.as_str(), content_s], vec!["no stage train/7".into()]),
    ];
    for (what, args, expect) in &cases {
        let o = pipe().arg("stylize").args(args).arg("--out").arg(&refused).arg("--store").arg(&store).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{what}: {}", text(&o));
        for e in expect {
            assert!(err.contains(e.as_str()), "{what}: expected `{e}` in {err}");
        }
        assert!(!refused.exists() && !refused.parent().unwrap().exists(), "{what}: --out was written");
        assert_eq!(files_under(&store), before, "{what}: the store changed");
    }
    // --out a folder; a store that is not there (and is not made)
    let o = stylize(&store, &run_id, &content, dir.path(), &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("is a directory"), "{}", text(&o));
    let nowhere = dir.path().join("no-store");
    let o = stylize(&nowhere, &run_id, &content, &refused, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("not a pipe store"), "{}", text(&o));
    assert!(!nowhere.exists() && !refused.exists());
    assert_eq!(files_under(&store), before);

    // a texture smaller than data.patch, found when load reads it, into this existing store:
    // exit 2 and nothing of the refused run left
    let small_tex = dir.path().join("small-texture");
    std::fs::create_dir_all(&small_tex).unwrap();
    grey_png(&small_tex.join("brick.png"), 12, 64);
    let o = pipe().arg("run").arg(tiny_igm_texture(dir.path(), &small_tex)).arg("--store").arg(&store).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(err.contains("brick.png") && err.contains("12x64") && err.contains("smaller than data.patch = 16") && err.contains("at least 16x16"), "{err}");
    assert_eq!(files_under(&store), before, "a refused texture left something in the store");
}

#[test]
fn texture_folders_without_the_image_or_with_one_smaller_than_a_patch_are_refused_writing_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let folder = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    let empty = folder("empty");
    let other = folder("only-grass");
    std::fs::copy(textures().join("grass.png"), other.join("grass.png")).unwrap();
    let small = folder("small");
    grey_png(&small.join("brick.png"), 15, 15);
    let text_file = folder("text");
    std::fs::write(text_file.join("brick.png"), "not a png").unwrap();
    let cases: [(&Path, &[&str]); 4] = [
        (&empty, &["data.path", "holds no brick.png"]),
        (&other, &["data.path", "holds no brick.png"]),
        (&small, &["brick.png", "15x15", "smaller than data.patch = 16", "at least 16x16"]),
        (&text_file, &["brick.png", "expected a PNG or JPEG image"]),
    ];
    for (data, expect) in cases {
        let toml = dir.path().join(format!("{}-pipeline", data.file_name().unwrap().to_str().unwrap()));
        std::fs::create_dir_all(&toml).unwrap();
        let file = tiny_igm_texture(&toml, data);
        let store = dir.path().join("never-made");
        let o = pipe().arg("run").arg(&file).arg("--store").arg(&store).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{}: {}", data.display(), text(&o));
        for e in expect {
            assert!(err.contains(e), "{}: expected `{e}` in {err}", data.display());
        }
        assert!(!store.exists(), "{}: a refused texture made a store", data.display());
        // and `pipe status` refuses what it can see before running
        if data == empty.as_path() {
            let o = pipe().arg("status").arg(&file).arg("--store").arg(&store).output().unwrap();
            assert_eq!(o.status.code(), Some(2), "{}", text(&o));
            assert!(!store.exists());
        }
    }
}
