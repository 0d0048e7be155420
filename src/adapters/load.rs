//! `load`: raw files -> train / validation / test image sets, split by a seeded permutation.

use crate::executor::StageIo;
use crate::UserError;
use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::json;
use stages::codec::encode_image_set;
use stages::data::mnist::load_pair;
use stages::data::{cifar, folder, parquet, svhn, DataError, ImageSet};
use std::path::Path;
use stages::rng::Rng;

#[derive(Deserialize)]
struct Params {
    format: String,
    #[serde(default)]
    channels: usize,
    train_size: usize,
    validation_size: usize,
    test_size: usize,
    #[serde(default)]
    balanced: bool,
    seed: u64,
}

/// The inputs named `prefix`N, loaded and concatenated in order.
fn concat(io: &StageIo, prefix: &str, load: fn(&Path) -> std::result::Result<ImageSet, DataError>) -> Result<ImageSet> {
    let sets = io.input_names(prefix).iter().map(|name| Ok(load(&io.file(name)?)?)).collect::<Result<Vec<_>>>()?;
    ImageSet::concat(&sets).context("data files of different image shapes")
}

pub fn run(io: &mut StageIo) -> Result<()> {
    let p: Params = io.params()?;
    let (full, test) = match p.format.as_str() {
        "mnist" => (load_pair(&io.file("train_images")?, &io.file("train_labels")?)?, load_pair(&io.file("test_images")?, &io.file("test_labels")?)?),
        "cifar10" => (concat(io, "train.", cifar::read_batch)?, concat(io, "test.", cifar::read_batch)?),
        "svhn" => (concat(io, "train.", svhn::load_svhn)?, concat(io, "test.", svhn::load_svhn)?),
        "parquet" => {
            let dir = io.file("parquet")?;
            (parquet::load_split(&dir, "train", p.channels)?, parquet::load_split(&dir, "test", p.channels)?)
        }
        "folder" => {
            // One folder, no official test split: test examples are drawn like validation.
            let f = folder::load_folder(&io.file("folder")?, p.channels)?;
            io.summary("classes", json!(f.classes));
            let n = f.set.len();
            if p.test_size == 0 || p.test_size >= n {
                return Err(UserError(format!("data.test_size = {}: an image folder needs a test split between 1 and {} images", p.test_size, n - 1)).into());
            }
            let mut test_idx = Rng::new(p.seed ^ 0x7e57).permutation(n);
            let mut rest = test_idx.split_off(p.test_size);
            test_idx.sort_unstable();
            rest.sort_unstable();
            (f.set.select(&rest), f.set.select(&test_idx))
        }
        other => anyhow::bail!("no loader for data format `{other}`"),
    };
    let n = full.len();
    if p.validation_size >= n {
        return Err(UserError(format!("data.validation_size = {} leaves no training example: the training files hold {n}", p.validation_size)).into());
    }
    let train_n = if p.train_size == 0 { n - p.validation_size } else { p.train_size };
    if p.validation_size + train_n > n {
        return Err(UserError(format!(
            "data.train_size = {} plus data.validation_size = {} exceeds the {n} examples of the training files",
            p.train_size, p.validation_size
        ))
        .into());
    }
    if p.test_size > test.len() {
        return Err(UserError(format!("data.test_size = {} exceeds the {} examples of the test files", p.test_size, test.len())).into());
    }
    let perm = Rng::new(p.seed).permutation(n);
    let pick = |range: std::ops::Range<usize>| {
        let mut idx = perm[range].to_vec();
        idx.sort_unstable(); // file order inside a split: easier to read, same content
        full.select(&idx)
    };
    let validation = pick(0..p.validation_size);
    let train = if p.balanced && p.train_size > 0 {
        // the first train_size / K of each class in the permutation (after validation)
        let classes = full.labels.iter().max().map_or(0, |m| *m as usize + 1);
        let per_class = train_n / classes.max(1);
        let mut taken = vec![0usize; classes];
        let mut idx: Vec<usize> = perm[p.validation_size..]
            .iter()
            .copied()
            .filter(|&i| {
                let c = full.labels[i] as usize;
                taken[c] += 1;
                taken[c] <= per_class
            })
            .collect();
        if let Some(c) = taken.iter().position(|&t| t < per_class) {
            return Err(UserError(format!("data.balanced: class {c} has {} training examples, fewer than the {per_class} that train_size = {} asks per class", taken[c], p.train_size)).into());
        }
        idx.sort_unstable();
        full.select(&idx)
    } else {
        pick(p.validation_size..p.validation_size + train_n)
    };
    let test = if p.test_size == 0 { test } else { test.select(&(0..p.test_size).collect::<Vec<_>>()) };
    for (name, set) in [("train", &train), ("validation", &validation), ("test", &test)] {
        io.write(&format!("{name}.safetensors"), &encode_image_set(set)?)?;
        let classes = full.labels.iter().max().map_or(0, |m| *m as usize + 1);
        io.summary(name, json!({"count": set.len(), "class_counts": set.class_counts(classes)}));
    }
    io.summary("line", json!(format!("train {}  validation {}  test {}", train.len(), validation.len(), test.len())));
    Ok(())
}
