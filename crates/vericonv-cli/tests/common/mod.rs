//! Helpers of the CLI's integration tests.

use std::path::{Path, PathBuf};

/// The repository root (models and scripts live there).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Two 28×28 images as IDX files in `dir`; returns the `--dataset` value.
pub fn small_idx(dir: &Path) -> String {
    let mut images = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28];
    images.extend((0..2 * 28 * 28).map(|i| (i % 251) as u8));
    std::fs::write(dir.join("images.idx"), images).expect("write");
    std::fs::write(dir.join("labels.idx"), [0, 0, 8, 1, 0, 0, 0, 2, 7, 2]).expect("write");
    format!("idx:{},{}", dir.join("images.idx").display(), dir.join("labels.idx").display())
}
