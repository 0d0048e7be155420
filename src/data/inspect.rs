//! `pipe data inspect PATH`: what a path holds (MNIST, CIFAR-10, SVHN, Parquet shards, an
//! image folder or one image) (format, splits, counts, image shape, class
//! histogram), read with the same loaders the pipelines use, so a file that inspects
//! cleanly also loads.

use crate::UserError;
use anyhow::Result;
use serde::Serialize;
use stages::data::{cifar, folder, mnist, parquet, svhn, ImageSet};
use std::path::Path;

#[derive(Debug, Serialize)]
pub struct Split {
    pub name: String,
    pub count: usize,
    /// channels, height, width
    pub shape: [usize; 3],
    pub class_counts: Vec<usize>,
}

#[derive(Debug, Serialize)]
pub struct Inspection {
    pub path: String,
    pub format: String,
    pub classes: Option<Vec<String>>,
    pub splits: Vec<Split>,
}

/// 1 when every image's three planes are equal (greyscale stored as RGB), else C.
fn native_channels(set: &ImageSet) -> usize {
    if set.channels != 3 {
        return set.channels;
    }
    let plane = set.height * set.width;
    let grey = (0..set.len()).all(|i| {
        let img = set.image(i);
        img[..plane] == img[plane..2 * plane] && img[..plane] == img[2 * plane..]
    });
    if grey { 1 } else { 3 }
}

fn split(name: &str, set: &ImageSet) -> Split {
    let k = set.labels.iter().max().map_or(0, |m| *m as usize + 1);
    Split { name: name.into(), count: set.len(), shape: [native_channels(set), set.height, set.width], class_counts: set.class_counts(k) }
}

/// What `path` holds; a path that is not a readable data set is a [`UserError`].
pub fn inspect(path: &Path) -> Result<Inspection> {
    detect(path).map_err(|e| UserError(format!("{e:#}")).into())
}

fn detect(path: &Path) -> Result<Inspection> {
    let shown = path.display().to_string();
    let mut out = Inspection { path: shown.clone(), format: String::new(), classes: None, splits: Vec::new() };
    if !path.exists() {
        return Err(UserError(format!("{shown} does not exist")).into());
    }
    if path.is_file() {
        let ext = path.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
        match ext.as_str() {
            "mat" => {
                out.format = "svhn (MATLAB .mat)".into();
                out.splits.push(split(&path.file_stem().unwrap_or_default().to_string_lossy(), &svhn::load_svhn(path)?));
            }
            "bin" => {
                out.format = "cifar10 (binary batch)".into();
                out.splits.push(split(&path.file_stem().unwrap_or_default().to_string_lossy(), &cifar::read_batch(path)?));
            }
            _ => {
                let (pixels, height, width) = folder::load_image(path, 3)?;
                out.format = "image".into();
                let set = ImageSet { pixels, labels: vec![0], channels: 3, height, width };
                out.splits.push(Split { class_counts: Vec::new(), ..split("image", &set) });
            }
        }
        return Ok(out);
    }
    if mnist::split_files(path, mnist::Split::Train).is_ok() || mnist::split_files(path, mnist::Split::Test).is_ok() {
        out.format = "mnist (IDX)".into();
        for (name, s) in [("train", mnist::Split::Train), ("test", mnist::Split::Test)] {
            out.splits.push(split(name, &mnist::load_split(path, s)?));
        }
    } else if path.join("data_batch_1.bin").is_file() || path.join("test_batch.bin").is_file() {
        out.format = "cifar10 (binary batches)".into();
        for (name, s) in [("train", cifar::Split::Train), ("test", cifar::Split::Test)] {
            out.splits.push(split(name, &cifar::load_split(path, s)?));
        }
    } else if ["train_32x32.mat", "test_32x32.mat", "extra_32x32.mat"].iter().any(|f| path.join(f).is_file()) {
        out.format = "svhn (MATLAB .mat)".into();
        for f in ["train_32x32.mat", "extra_32x32.mat", "test_32x32.mat"] {
            if path.join(f).is_file() {
                out.splits.push(split(f.trim_end_matches("_32x32.mat"), &svhn::load_svhn(&path.join(f))?));
            }
        }
    } else if parquet::split_files(path, "train").is_ok() || parquet::split_files(path, "test").is_ok() {
        out.format = "parquet (image + label columns)".into();
        for name in ["train", "test"] {
            if parquet::split_files(path, name).is_ok() {
                out.splits.push(split(name, &parquet::load_split(path, name, 3)?));
            }
        }
    } else {
        let f = folder::load_folder(path, 3).map_err(|e| UserError(format!("{shown}: not MNIST, CIFAR-10 or SVHN files, and not an image folder: {e}")))?;
        out.format = "image folder".into();
        out.classes = Some(f.classes.clone());
        out.splits.push(split("all", &f.set));
    }
    Ok(out)
}

pub fn print(i: &Inspection) {
    println!("{}: {}", i.path, i.format);
    if let Some(c) = &i.classes {
        println!("classes: {}", c.join(", "));
    }
    for s in &i.splits {
        println!("  {:<8} {:>7} images  {}x{}x{}  per class: {:?}", s.name, s.count, s.shape[0], s.shape[1], s.shape[2], s.class_counts);
    }
}
