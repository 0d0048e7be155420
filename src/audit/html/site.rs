//! The folder a report goes to. It is built whole in a sibling temp folder and renamed into
//! place, so a failed or killed report leaves the previous one (or nothing), never half a
//! site. Only a folder that is absent, empty or an earlier report (it holds [`MARKER`]) is
//! replaced: anything else is the user's and is refused before anything is written.

use crate::engine::store::Store;
use crate::UserError;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// The file that marks a folder as a report `pipe` may replace.
pub const MARKER: &str = ".pipe-report";
const MARKER_TEXT: &str = "written by `pipe report --html`; the next report replaces this whole folder\n";

/// A picture copied from the store into the site.
#[derive(Clone)]
pub struct Image {
    /// Its path relative to the site's root.
    pub src: String,
    /// Width and height in pixels, from the PNG header.
    pub size: Option<(u32, u32)>,
}

pub struct Site {
    dir: PathBuf,
    tmp: PathBuf,
    images: BTreeMap<String, Option<Image>>,
    published: bool,
}

/// Refuses a `dir` that is a file, or a non-empty folder that is not an earlier report.
pub fn check(dir: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        other => other.with_context(|| format!("reading {}", dir.display()))?,
    };
    if !meta.is_dir() {
        return Err(UserError(format!("--html {}: is a file, not a folder", dir.display())).into());
    }
    let empty = fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?.next().is_none();
    if !empty && !dir.join(MARKER).is_file() {
        return Err(UserError(format!("--html {}: the folder holds files that are not a pipe report (no {MARKER}); refusing to replace it: give an empty or new folder", dir.display())).into());
    }
    Ok(())
}

/// The width and height of a PNG, from its IHDR chunk.
fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    let be = |r: std::ops::Range<usize>| bytes.get(r).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    (bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.get(12..16) == Some(b"IHDR")).then(|| Some((be(16..20)?, be(20..24)?))).flatten()
}

impl Site {
    /// A fresh build folder next to `dir` (checked again here: nothing is written for a
    /// folder that is not ours to replace).
    pub fn begin(dir: &Path) -> Result<Site> {
        check(dir)?;
        let dir = std::path::absolute(dir).with_context(|| format!("resolving {}", dir.display()))?;
        let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
            return Err(UserError(format!("--html {}: give a folder below the root", dir.display())).into());
        };
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        let tmp = parent.join(format!(".{}.pipe-report-{}", name.to_string_lossy(), std::process::id()));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
        }
        fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        Ok(Site { dir, tmp, images: BTreeMap::new(), published: false })
    }

    /// Writes a file of the site (`rel` to its root).
    pub fn write(&self, rel: &str, bytes: &[u8]) -> Result<()> {
        // names come from run records: one edited to hold `..` or `/` must not write elsewhere
        anyhow::ensure!(Path::new(rel).components().all(|c| matches!(c, std::path::Component::Normal(_))), "{rel:?} is not a path inside the report");
        let path = self.tmp.join(rel);
        if let Some(p) = path.parent() {
            fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
        }
        fs::write(&path, bytes).with_context(|| format!("writing {} ({} bytes)", path.display(), bytes.len()))
    }

    /// Copies a PNG object of the store into `img/` (once, however many pages show it):
    /// the site must outlive a `pipe gc`. None when the object is gone from the store; a
    /// corrupt one is an error, as on every read.
    pub fn image(&mut self, store: &Store, digest: &str) -> Result<Option<Image>> {
        if let Some(seen) = self.images.get(digest) {
            return Ok(seen.clone());
        }
        let image = if store.has_object(digest) {
            let bytes = store.read(digest)?;
            let src = format!("img/{digest}.png");
            self.write(&src, &bytes)?;
            Some(Image { src, size: png_size(&bytes) })
        } else {
            None
        };
        self.images.insert(digest.to_string(), image.clone());
        Ok(image)
    }

    /// Puts the built site in place of `dir` (and of the report it held).
    pub fn publish(mut self) -> Result<()> {
        self.write(MARKER, MARKER_TEXT.as_bytes())?;
        check(&self.dir)?;
        if self.dir.exists() {
            let old = self.tmp.with_extension("old");
            fs::rename(&self.dir, &old).with_context(|| format!("moving the previous report {} aside", self.dir.display()))?;
            if let Err(e) = fs::rename(&self.tmp, &self.dir) {
                let _ = fs::rename(&old, &self.dir);
                return Err(e).with_context(|| format!("moving the report into {}", self.dir.display()));
            }
            fs::remove_dir_all(&old).with_context(|| format!("removing the previous report at {}", old.display()))?;
        } else {
            fs::rename(&self.tmp, &self.dir).with_context(|| format!("moving the report into {}", self.dir.display()))?;
        }
        self.published = true;
        Ok(())
    }
}

impl Drop for Site {
    /// A report that failed half-way leaves nothing behind.
    fn drop(&mut self) {
        if !self.published {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_size_of_a_png_and_nothing_from_other_bytes() {
        let png = stages::grid::encode_grid_png(&[0.0; 2 * 3 * 4], 2, 1, 3, 4, 2, 1).unwrap();
        assert_eq!(png_size(&png), Some((9, 3)));
        assert_eq!(png_size(b"GIF89a"), None);
        assert_eq!(png_size(&png[..18]), None);
    }
}
