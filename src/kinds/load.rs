//! `load`: raw files -> train / validation / test image sets, split by a seeded permutation.

use super::Kind;
use crate::engine::executor::StageIo;
use crate::engine::progress::Meter;
use crate::engine::graph::KindId;
use crate::UserError;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use stages::candle::Device;
use stages::codec::encode_image_set;
use stages::data::mnist::load_pair;
use stages::data::{cifar, folder, parquet, svhn, DataError, ImageSet};
use stages::rng::Rng;
use std::path::{Path, PathBuf};

pub struct Load;

/// The `data.format` setting: how the raw files are laid out.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DataFormat {
    /// IDX files (`train-images-idx3-ubyte[.gz]`, ...) in one directory.
    Mnist,
    /// CIFAR-10 binary batches (`data_batch_1.bin` .. `data_batch_5.bin`, `test_batch.bin`).
    Cifar10,
    /// SVHN cropped digits (`train_32x32.mat`, `test_32x32.mat`, `extra_32x32.mat`).
    Svhn,
    /// An image folder: one sub-folder per class (PNG or JPEG), e.g. `face/` and `nonface/`.
    /// The test set is split off like the validation set (`test_size`).
    Folder,
    /// One texture image (`<data.path>/<data.texture>.png` or `.jpg`): every split is
    /// random `data.patch`-sided crops of it, all of class 0 (WINN and IGM textures).
    Texture,
    /// Hugging Face style Parquet shards (`train*.parquet`, `test*.parquet`, in the folder
    /// or its `data/`): an `image` column of PNG/JPEG bytes and a `label` column.
    Parquet,
}


/// Outputs: the three splits as image sets.
pub const TRAIN: &str = "train.safetensors";
pub const VALIDATION: &str = "validation.safetensors";
pub const TEST: &str = "test.safetensors";

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub format: DataFormat,
    /// Image folders and Parquet images: 1 (grey) or 3 (RGB), converting as needed. Absent
    /// for formats whose files fix it (MNIST grey, CIFAR-10 and SVHN RGB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<usize>,
    pub train_size: usize,
    pub validation_size: usize,
    pub test_size: usize,
    pub balanced: bool,
    /// Texture: the side of the square crops. Absent for other formats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<usize>,
    /// Seeds the validation split and the `train_size` draw.
    pub seed: u64,
}

impl Kind for Load {
    // 2: SVHN inputs named train / extra / test; `channels` only where it converts
    const ID: KindId = KindId { name: "load", version: 2 };
    type Params = Params;
    const OUTPUTS: &'static [&'static str] = &[TRAIN, VALIDATION, TEST];
    fn run(p: Params, io: &mut StageIo, _device: &Device) -> Result<()> {
        run(p, io)
    }
}

/// The four files of an MNIST directory, by input name.
const MNIST_FILES: [(&str, &str); 4] = [
    ("train_images", "train-images-idx3-ubyte"),
    ("train_labels", "train-labels-idx1-ubyte"),
    ("test_images", "t10k-images-idx3-ubyte"),
    ("test_labels", "t10k-labels-idx1-ubyte"),
];
/// Inputs of CIFAR-10: `train.N` / `test.N`, concatenated in order.
const TRAIN_FILES: &str = "train.";
const TEST_FILES: &str = "test.";
/// Inputs of SVHN, by the names of its official splits.
const SVHN_TRAIN: &str = "train";
const SVHN_EXTRA: &str = "extra";
const SVHN_TEST: &str = "test";
/// Input of formats read as a whole directory.
const FOLDER: &str = "folder";
const PARQUET: &str = "parquet";
const TEXTURE: &str = "texture";

/// The files a `load` stage reads, by input name, or the name of the first one missing.
pub fn data_files(format: DataFormat, dir: &Path, svhn_extra: bool, texture: Option<&str>) -> std::result::Result<Vec<(String, PathBuf)>, String> {
    let need = |name: String, file: &str| {
        let p = dir.join(file);
        if p.is_file() { Ok((name, p)) } else { Err(file.to_string()) }
    };
    match format {
        DataFormat::Mnist => MNIST_FILES
            .iter()
            .map(|(name, base)| {
                [dir.join(base), dir.join(format!("{base}.gz"))]
                    .into_iter()
                    .find(|p| p.is_file())
                    .map(|p| (name.to_string(), p))
                    .ok_or_else(|| format!("{base} (or {base}.gz)"))
            })
            .collect(),
        DataFormat::Cifar10 => (1..=5)
            .map(|i| need(format!("{TRAIN_FILES}{i}"), &format!("data_batch_{i}.bin")))
            .chain([need(format!("{TEST_FILES}1"), "test_batch.bin")])
            .collect(),
        DataFormat::Folder => Ok(vec![(FOLDER.to_string(), dir.to_path_buf())]),
        DataFormat::Texture => {
            let name = texture.unwrap_or("");
            ["png", "jpg", "jpeg"].iter().map(|e| dir.join(format!("{name}.{e}"))).find(|p| p.is_file()).map(|p| vec![(TEXTURE.to_string(), p)]).ok_or_else(|| format!("{name}.png (or .jpg)"))
        }
        DataFormat::Parquet => {
            for split in ["train", "test"] {
                stages::data::parquet::split_files(dir, split).map_err(|_| format!("{split}*.parquet shards"))?;
            }
            Ok(vec![(PARQUET.to_string(), dir.to_path_buf())])
        }
        DataFormat::Svhn => {
            let mut files = vec![need(SVHN_TRAIN.into(), "train_32x32.mat")];
            if svhn_extra {
                files.push(need(SVHN_EXTRA.into(), "extra_32x32.mat"));
            }
            files.push(need(SVHN_TEST.into(), "test_32x32.mat"));
            files.into_iter().collect()
        }
    }
}

/// The inputs `names` read one after another into one set, counting their bytes.
fn concat(io: &StageIo, meter: &mut Meter, names: &[String], load: fn(&Path) -> std::result::Result<ImageSet, DataError>) -> Result<ImageSet> {
    let sets = names.iter().map(|name| read_counted(io, meter, &[name], |p| Ok(load(&p[0])?))).collect::<Result<Vec<_>>>()?;
    ImageSet::concat(&sets).context("data files of different image shapes")
}

/// `read` over the paths of inputs `names`, then their bytes counted as done.
fn read_counted<T>(io: &StageIo, meter: &mut Meter, names: &[&str], read: impl FnOnce(&[PathBuf]) -> Result<T>) -> Result<T> {
    let paths = names.iter().map(|n| io.file(n)).collect::<Result<Vec<_>>>()?;
    let out = read(&paths)?;
    if meter.inc(paths.iter().map(|p| bytes_under(p)).sum()).is_break() {
        return Err(stages::stopped().into());
    }
    Ok(out)
}

/// The size of a file, or of every file under a directory.
fn bytes_under(path: &Path) -> u64 {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => std::fs::read_dir(path).map(|d| d.flatten().map(|e| bytes_under(&e.path())).sum()).unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

fn run(p: Params, io: &mut StageIo) -> Result<()> {
    if p.format == DataFormat::Texture {
        return crops(p, io);
    }
    let (full, test) = read(&p, io)?;
    if (full.channels, full.height, full.width) != (test.channels, test.height, test.width) {
        return Err(UserError(format!(
            "the training files hold {}x{}x{} images and the test files {}x{}x{}; both splits must have one image shape",
            full.channels, full.height, full.width, test.channels, test.height, test.width
        ))
        .into());
    }
    split(p, io, full, test)
}

/// The training and test files as image sets; a file that does not read as its format is
/// bad input (exit 2, as `pipe data inspect` says of it), not a failure of pipe.
fn read(p: &Params, io: &mut StageIo) -> Result<(ImageSet, ImageSet)> {
    let bad = |e: anyhow::Error| -> anyhow::Error {
        if e.chain().any(|c| c.downcast_ref::<DataError>().is_some()) {
            UserError(format!("{e:#}")).into()
        } else {
            e
        }
    };
    read_files(p, io).map_err(bad)
}

fn read_files(p: &Params, io: &mut StageIo) -> Result<(ImageSet, ImageSet)> {
    let inputs = io.input_names("");
    let total = inputs.iter().map(|n| io.file(n).map_or(0, |p| bytes_under(&p))).sum();
    let mut meter = io.progress(total, "bytes", "reading data");
    let channels = || p.channels.with_context(|| format!("stage {}: format {:?} needs a `channels` parameter", io.stage_id(), p.format));
    let sets = match p.format {
        DataFormat::Mnist => {
            let pair = |i: usize| [MNIST_FILES[i].0, MNIST_FILES[i + 1].0];
            let train = read_counted(io, &mut meter, &pair(0), |f| Ok(load_pair(&f[0], &f[1])?))?;
            (train, read_counted(io, &mut meter, &pair(2), |f| Ok(load_pair(&f[0], &f[1])?))?)
        }
        DataFormat::Cifar10 => (concat(io, &mut meter, &io.input_names(TRAIN_FILES), cifar::read_batch)?, concat(io, &mut meter, &io.input_names(TEST_FILES), cifar::read_batch)?),
        DataFormat::Svhn => {
            let train: Vec<String> = [SVHN_TRAIN, SVHN_EXTRA].into_iter().filter(|n| io.has_input(n)).map(String::from).collect();
            (concat(io, &mut meter, &train, svhn::load_svhn)?, concat(io, &mut meter, &[SVHN_TEST.into()], svhn::load_svhn)?)
        }
        DataFormat::Parquet => {
            let c = channels()?;
            read_counted(io, &mut meter, &[PARQUET], |d| Ok((parquet::load_split(&d[0], "train", c)?, parquet::load_split(&d[0], "test", c)?)))?
        }
        DataFormat::Texture => unreachable!("textures are cropped, not split (crops)"),
        DataFormat::Folder => {
            // One folder, no official test split: test examples are drawn like validation.
            let c = channels()?;
            let f = read_counted(io, &mut meter, &[FOLDER], |d| Ok(folder::load_folder(&d[0], c)?))?;
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
    };
    meter.finish();
    Ok(sets)
}

fn split(p: Params, io: &mut StageIo, full: ImageSet, test: ImageSet) -> Result<()> {
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
    for (name, output, set) in [("train", TRAIN, &train), ("validation", VALIDATION, &validation), ("test", TEST, &test)] {
        io.write(output, &encode_image_set(set)?)?;
        let classes = full.labels.iter().max().map_or(0, |m| *m as usize + 1);
        io.summary(name, json!({"count": set.len(), "class_counts": set.class_counts(classes)}));
    }
    io.summary("line", json!(format!("train {}  validation {}  test {}", train.len(), validation.len(), test.len())));
    Ok(())
}

/// The splits of a texture: `train_size`, `validation_size` and `test_size` crops of
/// `patch` x `patch` at top-left corners drawn uniformly from the data seed.
fn crops(p: Params, io: &mut StageIo) -> Result<()> {
    let side = p.patch.with_context(|| format!("stage {}: a texture needs a `patch` parameter", io.stage_id()))?;
    let c = p.channels.with_context(|| format!("stage {}: a texture needs a `channels` parameter", io.stage_id()))?;
    let path = io.file(TEXTURE)?;
    let (pixels, h, w) = folder::load_image(&path, c).map_err(|e| UserError(format!("{e}")))?;
    if h < side || w < side {
        return Err(UserError(format!("{}: the texture is {h}x{w} (height x width), smaller than data.patch = {side}; expected at least {side}x{side} pixels to crop patches from", path.display())).into());
    }
    let mut rng = Rng::new(p.seed);
    let mut take = |n: usize| {
        let mut set = ImageSet { pixels: Vec::with_capacity(n * c * side * side), labels: vec![0; n], channels: c, height: side, width: side };
        for _ in 0..n {
            let (top, left) = (rng.below(h - side + 1), rng.below(w - side + 1));
            for ch in 0..c {
                for y in top..top + side {
                    let at = ch * h * w + y * w + left;
                    set.pixels.extend_from_slice(&pixels[at..at + side]);
                }
            }
        }
        set
    };
    let (train, validation, test) = (take(p.train_size), take(p.validation_size), take(p.test_size));
    for (output, set) in [(TRAIN, &train), (VALIDATION, &validation), (TEST, &test)] {
        io.write(output, &encode_image_set(set)?)?;
    }
    io.summary("line", json!(format!("{} training, {} validation, {} test crops of {side}x{side} from a {h}x{w} texture", train.len(), validation.len(), test.len())));
    Ok(())
}
