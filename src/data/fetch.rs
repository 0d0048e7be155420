//! `pipe data fetch mnist|svhn|cifar10 DIR`: the official files, each checked against its
//! published size and sha256 before it is kept (checksums as listed by TensorFlow
//! Datasets). Downloads go through `curl` to a temporary name and are renamed only once
//! verified, so an interrupted or corrupted download never looks like data.

use crate::UserError;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One file to fetch.
#[derive(Clone, Debug)]
pub struct Source {
    pub url: String,
    /// The name it gets in the target directory.
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

fn src(url: &str, size: u64, sha256: &str) -> Source {
    Source { url: url.into(), name: url.rsplit('/').next().unwrap_or(url).into(), size, sha256: sha256.into() }
}

/// The official files of a data set.
pub fn sources(dataset: &str) -> Result<Vec<Source>> {
    Ok(match dataset {
        "mnist" => vec![
            src("https://storage.googleapis.com/cvdf-datasets/mnist/train-images-idx3-ubyte.gz", 9912422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
            src("https://storage.googleapis.com/cvdf-datasets/mnist/train-labels-idx1-ubyte.gz", 28881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
            src("https://storage.googleapis.com/cvdf-datasets/mnist/t10k-images-idx3-ubyte.gz", 1648877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
            src("https://storage.googleapis.com/cvdf-datasets/mnist/t10k-labels-idx1-ubyte.gz", 4542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
        ],
        "svhn" => vec![
            src("http://ufldl.stanford.edu/housenumbers/train_32x32.mat", 182040794, "435e94d69a87fde4fd4d7f3dd208dfc32cb6ae8af2240d066de1df7508d083b8"),
            src("http://ufldl.stanford.edu/housenumbers/test_32x32.mat", 64275384, "cdce80dfb2a2c4c6160906d0bd7c68ec5a99d7ca4831afa54f09182025b6a75b"),
            src("http://ufldl.stanford.edu/housenumbers/extra_32x32.mat", 1329278602, "a133a4beb38a00fcdda90c9489e0c04f900b660ce8a316a5e854838379a71eb3"),
        ],
        "cifar10" => vec![src("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz", 170052171, "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd")],
        other => return Err(UserError(format!("unknown data set `{other}`: expected mnist, svhn or cifar10")).into()),
    })
}

/// The sha256 of a file, in lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Ok when `path` has the source's size and sha256; an error saying which differs.
pub fn verify(path: &Path, s: &Source) -> Result<()> {
    let size = fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len();
    if size != s.size {
        bail!("{}: {size} bytes, expected {} for {}", path.display(), s.size, s.url);
    }
    let got = sha256_file(path)?;
    if got != s.sha256 {
        bail!("{}: sha256 {got}, expected {} for {}", path.display(), s.sha256, s.url);
    }
    Ok(())
}

/// Fetches `sources` into `dir`: a file already there and verified is kept; anything else
/// is downloaded to a temporary name, verified, then renamed. Returns the verified paths.
pub fn fetch(dir: &Path, sources: &[Source]) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut out = Vec::new();
    for s in sources {
        let dest = dir.join(&s.name);
        if dest.is_file() && verify(&dest, s).is_ok() {
            println!("ok       {} (already there, verified)", s.name);
            out.push(dest);
            continue;
        }
        let partial = dir.join(format!(".{}.partial", s.name));
        println!("fetching {} ({:.1} MB)", s.url, s.size as f64 / 1e6);
        let status = Command::new("curl")
            .args(["--fail", "--location", "--retry", "3", "--silent", "--show-error", "--output"])
            .arg(&partial)
            .arg(&s.url)
            .status()
            .context("running curl (is it installed?)")?;
        if !status.success() {
            let _ = fs::remove_file(&partial);
            bail!("downloading {} failed (curl: {status}); nothing was kept", s.url);
        }
        if let Err(e) = verify(&partial, s) {
            let _ = fs::remove_file(&partial);
            return Err(e.context(format!("{} is not the official file; nothing was kept", s.url)));
        }
        fs::rename(&partial, &dest).with_context(|| format!("renaming into {}", dest.display()))?;
        println!("ok       {} (sha256 verified)", s.name);
        out.push(dest);
    }
    Ok(out)
}

/// The `.bin` batches of the CIFAR-10 tarball, written flat into `dir`.
pub fn extract_cifar(tarball: &Path, dir: &Path) -> Result<usize> {
    let f = fs::File::open(tarball).with_context(|| format!("reading {}", tarball.display()))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let mut n = 0;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_path_buf();
        if path.extension().is_some_and(|e| e == "bin") {
            let name = path.file_name().context("entry without a name")?.to_owned();
            entry.unpack(dir.join(name))?;
            n += 1;
        }
    }
    Ok(n)
}

/// `pipe data fetch`.
pub fn run(dataset: &str, dir: &Path) -> Result<()> {
    let files = fetch(dir, &sources(dataset)?)?;
    if dataset == "cifar10" {
        let n = extract_cifar(&files[0], dir)?;
        println!("extracted {n} batch files into {}", dir.display());
    }
    println!("{dataset} is in {}; use it with data.path = \"{}\"", dir.display(), dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(dir: &Path, name: &str, bytes: &[u8], sha256: &str) -> Source {
        let p = dir.join(format!("origin-{name}"));
        fs::write(&p, bytes).unwrap();
        Source { url: format!("file://{}", p.display()), name: name.into(), size: bytes.len() as u64, sha256: sha256.into() }
    }

    // sha256("abc"), the FIPS 180-2 test vector
    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn verification_accepts_the_right_file_and_names_what_differs() {
        let dir = tempfile::tempdir().unwrap();
        let good = local(dir.path(), "a.bin", b"abc", ABC);
        let path = dir.path().join("origin-a.bin");
        assert_eq!(sha256_file(&path).unwrap(), ABC);
        verify(&path, &good).unwrap();
        let wrong_size = Source { size: 4, ..good.clone() };
        assert!(verify(&path, &wrong_size).unwrap_err().to_string().contains("3 bytes, expected 4"));
        fs::write(&path, b"abd").unwrap();
        assert!(verify(&path, &good).unwrap_err().to_string().contains("sha256"));
    }

    #[test]
    fn fetch_keeps_only_verified_files() {
        if Command::new("curl").arg("--version").output().is_err() {
            // CI machines have curl: there a missing one is a failure, not a skip
            assert!(std::env::var("CI").as_deref() != Ok("true"), "curl is missing, and CI=true needs it");
            eprintln!("skipped: no curl");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("data");
        let good = local(dir.path(), "a.bin", b"abc", ABC);
        let got = fetch(&target, std::slice::from_ref(&good)).unwrap();
        assert_eq!(fs::read(&got[0]).unwrap(), b"abc");
        // a second fetch keeps the verified file
        fetch(&target, std::slice::from_ref(&good)).unwrap();
        // a corrupted origin is refused and leaves nothing behind
        let bad = local(dir.path(), "b.bin", b"abd", ABC);
        let err = fetch(&target, &[bad]).unwrap_err();
        assert!(format!("{err:#}").contains("not the official file"), "{err:#}");
        assert!(!target.join("b.bin").exists() && !target.join(".b.bin.partial").exists());
        assert_eq!(sources("mnist").unwrap().len(), 4);
        assert!(sources("imagenet").is_err());
    }

    #[test]
    fn cifar_batches_come_out_of_the_tarball() {
        let dir = tempfile::tempdir().unwrap();
        let tarball = dir.path().join("c.tar.gz");
        {
            let gz = flate2::write::GzEncoder::new(fs::File::create(&tarball).unwrap(), flate2::Compression::fast());
            let mut b = tar::Builder::new(gz);
            for (name, data) in [("cifar-10-batches-bin/data_batch_1.bin", &b"x"[..]), ("cifar-10-batches-bin/readme.html", &b"y"[..])] {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_cksum();
                b.append_data(&mut h, name, data).unwrap();
            }
            b.into_inner().unwrap().finish().unwrap();
        }
        assert_eq!(extract_cifar(&tarball, dir.path()).unwrap(), 1);
        assert_eq!(fs::read(dir.path().join("data_batch_1.bin")).unwrap(), b"x");
        assert!(!dir.path().join("readme.html").exists());
    }
}
