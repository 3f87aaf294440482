//! Labelled image data sets, as `[0, 1]` floats in NCHW: IDX files (raw or gzip, as MNIST and
//! Fashion-MNIST ship), the 8×8 digits CSV of scikit-learn, the CIFAR-10/100 binary format, and
//! a folder of PNG/JPEG images with one sub-folder per class.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::{ModelError, Result};
use vericonv::Error;

/// A labelled image set. Its invariant (`images.len() = len · channels · height · width`, every
/// dimension positive, every pixel finite) is checked by every constructor.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Name for reports.
    name: String,
    /// Channels per image.
    channels: usize,
    /// Image height.
    height: usize,
    /// Image width.
    width: usize,
    /// `len × channels × height × width` values in `[0, 1]`.
    images: Vec<f32>,
    /// One label per image.
    labels: Vec<usize>,
}

fn parse_err(path: &Path, message: impl Into<String>) -> ModelError {
    ModelError::Parse { what: path.display().to_string(), message: message.into() }
}

/// The most bytes a data file may decompress to (4 GiB): a gzip bomb stops there.
const MAX_DECOMPRESSED: u64 = 1 << 32;

fn is_gzip(raw: &[u8]) -> bool {
    raw.starts_with(&[0x1f, 0x8b])
}

/// Reads a file, transparently un-gzipping it when it starts with the gzip magic, and refuses
/// to decompress more than `limit` bytes.
fn read_maybe_gz(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    if !is_gzip(&raw) {
        return Ok(raw);
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(raw.as_slice())
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| parse_err(path, format!("gzip: {e}")))?;
    if out.len() as u64 > limit {
        return Err(parse_err(path, format!("decompresses to more than {limit} bytes")));
    }
    Ok(out)
}

/// Parses an IDX file of unsigned bytes; returns its dimensions and data. A gzipped file's
/// header is read first, and no more is decompressed than the header announces (plus one byte,
/// to notice trailing data).
fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let raw = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    if !is_gzip(&raw) {
        return parse_idx(path, &raw);
    }
    let mut dec = flate2::read::GzDecoder::new(raw.as_slice());
    let mut head = vec![0u8; 4];
    dec.read_exact(&mut head).map_err(|e| parse_err(path, format!("gzip: {e}")))?;
    let dims = 4 * usize::from(head[3]);
    head.resize(4 + dims, 0);
    dec.read_exact(&mut head[4..]).map_err(|e| parse_err(path, format!("truncated IDX header: {e}")))?;
    let (dims, count) = idx_header(path, &head)?;
    let count = u64::try_from(count).ok().filter(|&c| c <= MAX_DECOMPRESSED).ok_or_else(|| {
        parse_err(path, format!("IDX dimensions {dims:?} announce more than {MAX_DECOMPRESSED} bytes"))
    })?;
    let mut data = Vec::new();
    dec.take(count + 1).read_to_end(&mut data).map_err(|e| parse_err(path, format!("gzip: {e}")))?;
    if data.len() as u64 != count {
        return Err(parse_err(
            path,
            format!("IDX dimensions {dims:?} need {count} bytes of data, the file has {}", data.len()),
        ));
    }
    Ok((dims, data))
}

/// Checks an IDX header (magic and dimensions); returns the dimensions and the data length
/// they announce.
fn idx_header(path: &Path, bytes: &[u8]) -> Result<(Vec<usize>, usize)> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 {
        return Err(parse_err(path, "not an IDX file of unsigned bytes (magic 0x0000_08xx)"));
    }
    let ndim = usize::from(bytes[3]);
    let header = 4 + 4 * ndim;
    if ndim == 0 || bytes.len() < header {
        return Err(parse_err(path, "truncated IDX header"));
    }
    let dims: Vec<usize> =
        bytes[4..header].chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize).collect();
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| parse_err(path, "IDX dimensions overflow"))?;
    Ok((dims, count))
}

/// Parses IDX bytes (`path` names them in errors).
fn parse_idx(path: &Path, bytes: &[u8]) -> Result<(Vec<usize>, Vec<u8>)> {
    let (dims, count) = idx_header(path, bytes)?;
    let header = 4 + 4 * dims.len();
    if bytes.len() - header != count {
        return Err(parse_err(
            path,
            format!("IDX dimensions {dims:?} need {count} bytes of data, the file has {}", bytes.len() - header),
        ));
    }
    Ok((dims, bytes[header..].to_vec()))
}

impl Dataset {
    /// A data set from decoded images: `labels.len()` images of `channels × height × width`
    /// values each, in NCHW order.
    ///
    /// # Errors
    /// [`crate::ModelError::Parse`] for a zero or too large dimension, [`Error::LengthMismatch`] when
    /// `images` does not hold exactly one image per label, [`crate::ModelError::NonFinite`] for a NaN or
    /// infinite pixel.
    pub fn new(
        name: impl Into<String>,
        (channels, height, width): (usize, usize, usize),
        images: Vec<f32>,
        labels: Vec<usize>,
    ) -> Result<Self> {
        let name = name.into();
        let per = channels
            .checked_mul(height)
            .and_then(|n| n.checked_mul(width))
            .filter(|&n| n > 0 && n <= crate::MAX_ELEMENTS)
            .ok_or_else(|| ModelError::Parse {
                what: format!("data set `{name}`"),
                message: format!("image shape {channels}×{height}×{width} is empty or too large"),
            })?;
        let expected = labels.len().checked_mul(per).ok_or_else(|| ModelError::Parse {
            what: format!("data set `{name}`"),
            message: format!("{} images of {per} values overflow", labels.len()),
        })?;
        if images.len() != expected {
            return Err(Error::LengthMismatch { what: "data set images", expected, got: images.len() }.into());
        }
        if let Some(index) = images.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::NonFinite {
                what: format!("data set `{name}` images"),
                index,
                value: images[index].to_string(),
            });
        }
        Ok(Self { name, channels, height, width, images, labels })
    }

    /// Name for reports.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Channels per image.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Image height.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Image width.
    pub fn width(&self) -> usize {
        self.width
    }

    /// `len × channels × height × width` values in `[0, 1]`, NCHW.
    pub fn images(&self) -> &[f32] {
        &self.images
    }

    /// One label per image.
    pub fn labels(&self) -> &[usize] {
        &self.labels
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Elements per image.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Images `range` (clamped to the set) and their labels.
    pub fn slice(&self, range: std::ops::Range<usize>) -> (&[f32], &[usize]) {
        let (a, b) = (range.start.min(self.len()), range.end.min(self.len()));
        (&self.images[a * self.image_len()..b * self.image_len()], &self.labels[a..b])
    }

    /// Keeps the first `n` images.
    pub fn truncate(&mut self, n: usize) {
        self.labels.truncate(n);
        self.images.truncate(self.labels.len() * self.image_len());
    }

    /// An IDX pair: `N × H × W` images and `N` labels (raw or gzip).
    ///
    /// # Errors
    /// [`crate::ModelError::Io`], or [`crate::ModelError::Parse`] for a malformed file or mismatched counts.
    pub fn from_idx(name: &str, images: &Path, labels: &Path) -> Result<Self> {
        Self::from_idx_parts(name, images, read_idx(images)?, labels, read_idx(labels)?)
    }

    /// An IDX pair already in memory (uncompressed).
    ///
    /// # Errors
    /// [`crate::ModelError::Parse`] for malformed data or mismatched counts.
    pub fn from_idx_bytes(name: &str, images: &[u8], labels: &[u8]) -> Result<Self> {
        let (ip, lp) = (Path::new("images (IDX)"), Path::new("labels (IDX)"));
        Self::from_idx_parts(name, ip, parse_idx(ip, images)?, lp, parse_idx(lp, labels)?)
    }

    fn from_idx_parts(
        name: &str,
        images: &Path,
        (dims, pixels): (Vec<usize>, Vec<u8>),
        labels: &Path,
        (ldims, lbl): (Vec<usize>, Vec<u8>),
    ) -> Result<Self> {
        let (n, h, w) = match dims.as_slice() {
            &[n, h, w] => (n, h, w),
            other => return Err(parse_err(images, format!("expected N×H×W images, found dimensions {other:?}"))),
        };
        if ldims != [n] {
            return Err(parse_err(labels, format!("{ldims:?} labels for {n} images")));
        }
        Self::new(
            name,
            (1, h, w),
            pixels.iter().map(|&p| f32::from(p) / 255.0).collect(),
            lbl.iter().map(|&l| usize::from(l)).collect(),
        )
    }

    /// scikit-learn's `digits.csv.gz` (64 pixel values 0..16 then the label, per row). The test
    /// split is the last 360 rows, the train split the rest.
    ///
    /// # Errors
    /// [`crate::ModelError::Io`], or [`crate::ModelError::Parse`] for a malformed row.
    pub fn from_digits_csv(path: &Path, test: bool) -> Result<Self> {
        let text =
            String::from_utf8(read_maybe_gz(path, MAX_DECOMPRESSED)?).map_err(|e| parse_err(path, e.to_string()))?;
        let mut images = Vec::new();
        let mut labels = Vec::new();
        for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
            let vals: Vec<f32> = line
                .split(',')
                .map(|v| v.trim().parse::<f32>())
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| parse_err(path, format!("row {i}: {e}")))?;
            // NaN fails every comparison: the checks are written so that it is refused.
            let label_ok = |l: f32| (0.0..=9.0).contains(&l) && l.fract() == 0.0;
            if vals.len() != 65 || !label_ok(vals[64]) || !vals[..64].iter().all(|v| (0.0..=16.0).contains(v)) {
                return Err(parse_err(path, format!("row {i}: expected 64 pixels in 0..16 and an integer label 0..9")));
            }
            images.extend(vals[..64].iter().map(|v| v / 16.0));
            labels.push(vals[64] as usize);
        }
        const TEST: usize = 360;
        if labels.len() <= TEST {
            return Err(parse_err(path, format!("{} rows; at least {} expected", labels.len(), TEST + 1)));
        }
        let split = labels.len() - TEST;
        let (images, labels) = if test {
            (images[split * 64..].to_vec(), labels[split..].to_vec())
        } else {
            (images[..split * 64].to_vec(), labels[..split].to_vec())
        };
        Self::new("digits", (1, 8, 8), images, labels)
    }

    /// CIFAR binary batches: each record is a label byte (CIFAR-10) or a coarse and a fine
    /// label byte (CIFAR-100, whose fine label is used), then 3×32×32 pixel bytes.
    ///
    /// # Errors
    /// [`crate::ModelError::Io`], or [`crate::ModelError::Parse`] when a file is not a whole number of records.
    pub fn from_cifar(name: &str, files: &[PathBuf], hundred: bool) -> Result<Self> {
        let label_bytes = if hundred { 2 } else { 1 };
        let record = label_bytes + 3 * 32 * 32;
        let mut images = Vec::new();
        let mut labels = Vec::new();
        for f in files {
            let bytes = std::fs::read(f).map_err(|e| ModelError::io(f, e))?;
            if bytes.is_empty() || bytes.len() % record != 0 {
                return Err(parse_err(
                    f,
                    format!("{} bytes is not a whole number of {record}-byte CIFAR records", bytes.len()),
                ));
            }
            let classes = if hundred { 100 } else { 10 };
            for (i, r) in bytes.chunks_exact(record).enumerate() {
                let label = usize::from(r[label_bytes - 1]);
                if label >= classes {
                    return Err(parse_err(f, format!("record {i}: label {label}, expected 0..{classes}")));
                }
                labels.push(label);
                images.extend(r[label_bytes..].iter().map(|&p| f32::from(p) / 255.0));
            }
        }
        Self::new(name, (3, 32, 32), images, labels)
    }

    /// A folder with one sub-folder per class (sorted by name: the first is label 0) holding
    /// PNG or JPEG images, converted to `channels` (1 or 3) and resized to `height × width`.
    ///
    /// # Errors
    /// [`crate::ModelError::Io`], [`crate::ModelError::Parse`] for an undecodable image or an empty folder.
    pub fn from_folder(root: &Path, channels: usize, height: usize, width: usize) -> Result<Self> {
        let list = |dir: &Path| -> Result<Vec<PathBuf>> {
            let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| ModelError::io(dir, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            v.sort();
            Ok(v)
        };
        let classes: Vec<PathBuf> = list(root)?.into_iter().filter(|p| p.is_dir()).collect();
        let mut images = Vec::new();
        let mut labels = Vec::new();
        for (label, dir) in classes.iter().enumerate() {
            for file in list(dir)? {
                let ext = file.extension().and_then(|e| e.to_str()).map(str::to_lowercase);
                if !matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg")) {
                    continue;
                }
                let img = image::open(&file).map_err(|e| parse_err(&file, e.to_string()))?;
                let img = if (img.width() as usize, img.height() as usize) == (width, height) {
                    img
                } else {
                    img.resize_exact(width as u32, height as u32, image::imageops::FilterType::Triangle)
                };
                match channels {
                    1 => images.extend(img.to_luma8().pixels().map(|p| f32::from(p.0[0]) / 255.0)),
                    3 => {
                        let rgb = img.to_rgb8();
                        for c in 0..3 {
                            images.extend(rgb.pixels().map(|p| f32::from(p.0[c]) / 255.0));
                        }
                    }
                    other => {
                        return Err(ModelError::Unsupported(format!("image folders with {other} channels (1 or 3)")));
                    }
                }
                labels.push(label);
            }
        }
        if labels.is_empty() {
            return Err(parse_err(root, "no PNG or JPEG images in class sub-folders"));
        }
        Self::new(root.display().to_string(), (channels, height, width), images, labels)
    }

    /// Opens a data set by name: `mnist`, `fashion-mnist` or `digits` (their test splits, or
    /// with `train` their training splits, from `data_dir` as `scripts/fetch-data.sh` lays it
    /// out), or `idx:IMAGES,LABELS`, `cifar10:FILE[,FILE…]`, `cifar100:FILE[,FILE…]`,
    /// `folder:DIR` (for which `train` changes nothing). Folders are read at
    /// `channels × height × width`.
    ///
    /// # Errors
    /// [`crate::ModelError::Unsupported`] for an unknown name, and the errors of each loader. A missing
    /// built-in set says how to fetch it.
    pub fn open(
        spec: &str,
        data_dir: &Path,
        train: bool,
        channels: usize,
        height: usize,
        width: usize,
    ) -> Result<Self> {
        let hint = |e: ModelError| match e {
            ModelError::Io { path, source, .. } => {
                ModelError::Io { path, source, hint: " (run scripts/fetch-data.sh first)".into() }
            }
            other => other,
        };
        let (kind, arg) = spec.split_once(':').unwrap_or((spec, ""));
        let files = || arg.split(',').filter(|s| !s.is_empty()).map(PathBuf::from).collect::<Vec<_>>();
        let split = if train { "train" } else { "t10k" };
        match kind {
            "mnist" => Self::from_idx(
                "mnist",
                &data_dir.join(format!("mnist/{split}-images-idx3-ubyte")),
                &data_dir.join(format!("mnist/{split}-labels-idx1-ubyte")),
            )
            .map_err(hint),
            "fashion-mnist" => Self::from_idx(
                "fashion-mnist",
                &data_dir.join(format!("fashion-mnist/{split}-images-idx3-ubyte.gz")),
                &data_dir.join(format!("fashion-mnist/{split}-labels-idx1-ubyte.gz")),
            )
            .map_err(hint),
            "digits" => Self::from_digits_csv(&data_dir.join("digits/digits.csv.gz"), !train).map_err(hint),
            "idx" => match files().as_slice() {
                [images, labels] => Self::from_idx(spec, images, labels),
                _ => Err(ModelError::Unsupported(format!("`{spec}`: use idx:IMAGES,LABELS"))),
            },
            "cifar10" | "cifar100" => Self::from_cifar(spec, &files(), kind == "cifar100"),
            "folder" => Self::from_folder(Path::new(arg), channels, height, width),
            _ => Err(ModelError::Unsupported(format!(
                "data set `{spec}` (mnist, fashion-mnist, digits, idx:…, cifar10:…, cifar100:…, folder:…)"
            ))),
        }
    }
}
