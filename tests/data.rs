//! Data loaders on small files the tests generate: IDX (raw and gzip), CIFAR-10/100 binary, a
//! folder of PNG/JPEG images, the digits CSV; malformed files get typed errors.

use std::io::Write;
use vericonv_model::ModelError;

use rand::{Rng, RngExt};
use vericonv_model::Dataset;

fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 0x08, dims.len() as u8];
    dims.iter().for_each(|d| v.extend(d.to_be_bytes()));
    v.extend(data);
    v
}

#[test]
fn idx_raw_and_gzip_load_the_same_images() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dir = tmp.path();
    let mut r = common::rng(1);
    let mut pixels = vec![0u8; 3 * 4 * 5];
    r.fill_bytes(&mut pixels);
    let labels = [3u8, 1, 4];
    std::fs::write(dir.join("img"), idx(&[3, 4, 5], &pixels)).expect("write");
    std::fs::write(dir.join("lbl"), idx(&[3], &labels)).expect("write");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&idx(&[3, 4, 5], &pixels)).expect("gzip");
    std::fs::write(dir.join("img.gz"), gz.finish().expect("gzip")).expect("write");
    let raw = Dataset::from_idx("t", &dir.join("img"), &dir.join("lbl")).expect("raw");
    let gzd = Dataset::from_idx("t", &dir.join("img.gz"), &dir.join("lbl")).expect("gz");
    assert_eq!(raw, gzd);
    assert_eq!((raw.len(), raw.height(), raw.width(), raw.channels()), (3, 4, 5, 1));
    assert_eq!(raw.labels(), vec![3, 1, 4]);
    assert_eq!(raw.images()[7], f32::from(pixels[7]) / 255.0);
    let spec = format!("idx:{},{}", dir.join("img.gz").display(), dir.join("lbl").display());
    let by_name = Dataset::open(&spec, dir, false, 1, 4, 5).expect("by name");
    assert_eq!((by_name.images(), by_name.labels()), (raw.images(), raw.labels()));
    // Mismatched counts, truncated data, wrong magic.
    std::fs::write(dir.join("lbl2"), idx(&[2], &labels[..2])).expect("write");
    assert!(matches!(Dataset::from_idx("t", &dir.join("img"), &dir.join("lbl2")), Err(ModelError::Parse { .. })));
    std::fs::write(dir.join("short"), &idx(&[3, 4, 5], &pixels)[..30]).expect("write");
    assert!(matches!(Dataset::from_idx("t", &dir.join("short"), &dir.join("lbl")), Err(ModelError::Parse { .. })));
    std::fs::write(dir.join("magic"), [1, 2, 3, 4, 5]).expect("write");
    assert!(matches!(Dataset::from_idx("t", &dir.join("magic"), &dir.join("lbl")), Err(ModelError::Parse { .. })));
    assert!(matches!(Dataset::from_idx("t", &dir.join("missing"), &dir.join("lbl")), Err(ModelError::Io { .. })));
}

#[test]
fn cifar10_and_cifar100_records_load_with_their_labels() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dir = tmp.path();
    let mut r = common::rng(2);
    for (hundred, label_bytes) in [(false, 1usize), (true, 2)] {
        let mut bytes = Vec::new();
        let mut want = Vec::new();
        let mut first_pixels = Vec::new();
        for i in 0..5 {
            let label: u8 = r.random_range(0..if hundred { 100 } else { 10 });
            if hundred {
                bytes.push(label / 5); // coarse label, ignored
            }
            bytes.push(label);
            want.push(usize::from(label));
            let mut px = vec![0u8; 3072];
            r.fill_bytes(&mut px);
            if i == 0 {
                first_pixels = px.clone();
            }
            bytes.extend(px);
        }
        let file = dir.join(format!("batch{label_bytes}.bin"));
        std::fs::write(&file, &bytes).expect("write");
        let kind = if hundred { "cifar100" } else { "cifar10" };
        let d = Dataset::open(&format!("{kind}:{}", file.display()), dir, false, 3, 32, 32).expect("loads");
        assert_eq!(d.labels(), want);
        assert_eq!((d.channels(), d.height(), d.width()), (3, 32, 32));
        assert_eq!(d.images()[1024 + 5], f32::from(first_pixels[1024 + 5]) / 255.0, "channel-major like CIFAR");
        std::fs::write(&file, &bytes[..bytes.len() - 1]).expect("write");
        assert!(matches!(
            Dataset::from_cifar("c", std::slice::from_ref(&file), hundred),
            Err(ModelError::Parse { .. })
        ));
    }
}

#[test]
fn image_folders_load_classes_in_name_order_and_resize() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dir = tmp.path();
    for (class, value) in [("a_zero", 0u8), ("b_one", 200)] {
        std::fs::create_dir_all(dir.join(class)).expect("mkdir");
        image::GrayImage::from_pixel(6, 6, image::Luma([value])).save(dir.join(class).join("x.png")).expect("png");
        image::RgbImage::from_pixel(12, 12, image::Rgb([value, value, value]))
            .save(dir.join(class).join("y.jpg"))
            .expect("jpeg");
    }
    std::fs::write(dir.join("b_one").join("notes.txt"), "ignored").expect("write");
    let d = Dataset::open(&format!("folder:{}", dir.display()), dir, false, 1, 6, 6).expect("loads");
    assert_eq!(d.labels(), vec![0, 0, 1, 1]);
    assert_eq!(d.images().len(), 4 * 36);
    assert_eq!(d.images()[0], 0.0);
    assert!((d.images()[2 * 36] - 200.0 / 255.0).abs() < 1e-6, "PNG kept exactly");
    assert!((d.images()[3 * 36 + 10] - 200.0 / 255.0).abs() < 0.02, "JPEG resized from 12×12");
    let rgb = Dataset::from_folder(dir, 3, 6, 6).expect("rgb");
    assert_eq!(rgb.images().len(), 4 * 3 * 36);
    std::fs::write(dir.join("a_zero").join("bad.png"), b"not a png").expect("write");
    assert!(matches!(Dataset::from_folder(dir, 1, 6, 6), Err(ModelError::Parse { .. })));
    assert!(matches!(
        Dataset::from_folder(tempfile::tempdir().expect("temporary directory").path(), 1, 6, 6),
        Err(ModelError::Parse { .. })
    ));
}

#[test]
fn digits_csv_splits_the_last_360_rows_for_test() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dir = tmp.path();
    let rows: String = (0..400)
        .map(|i| {
            (0..64).map(|p| ((i + p) % 17).to_string()).chain([(i % 10).to_string()]).collect::<Vec<_>>().join(",")
                + "\n"
        })
        .collect();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(rows.as_bytes()).expect("gzip");
    std::fs::create_dir_all(dir.join("digits")).expect("mkdir");
    std::fs::write(dir.join("digits/digits.csv.gz"), gz.finish().expect("gzip")).expect("write");
    let test = Dataset::open("digits", dir, false, 1, 8, 8).expect("test split");
    let train = Dataset::open("digits", dir, true, 1, 8, 8).expect("train split");
    assert_eq!((test.len(), train.len()), (360, 40));
    assert_eq!(test.labels()[0], 40 % 10);
    assert_eq!(train.images()[1], 1.0 / 16.0);
    assert!(matches!(Dataset::open("nope", dir, false, 1, 8, 8), Err(ModelError::Unsupported(_))));
    let err = Dataset::open("mnist", dir, false, 1, 28, 28).expect_err("not fetched");
    assert!(err.to_string().contains("fetch-data.sh"), "{err}");
}
