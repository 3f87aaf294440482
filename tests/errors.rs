//! Bad input gets a typed error, never a panic.

use common::{ints, rng};
use rand::Rng;
use vericonv::{Claim, Mode, Verdict, strict_products, verify};
use vericonv::{CloudBackend, ConvCall, CpuBackend};
use vericonv::{Conv2d, Padding};
use vericonv::{Error, Result};
use vericonv::{ImageMask, SessionKey, seeded_rng};
use vericonv::{LayerConfig, PrivateConv};
use vericonv::{M31, P};
use vericonv::{MaskKernel, decrypt};
use vericonv::{encrypt_input, encrypt_kernel};
use vericonv_model::ModelError;

fn geom() -> Conv2d {
    Conv2d::builder(2, 3, (5, 5), (3, 3)).padding(Padding::uniform(1)).build().expect("valid")
}

#[test]
fn layer_construction_rejects_bad_kernels_bounds_and_settings() {
    let g = geom();
    let mut r = seeded_rng(1);
    let k = vec![1; g.kernel_len()];
    assert!(matches!(
        PrivateConv::new(g, &k[1..], None, LayerConfig::default(), &mut r),
        Err(Error::LengthMismatch { what: "kernel", .. })
    ));
    assert!(matches!(
        PrivateConv::new(g, &k, Some(&[1, 2]), LayerConfig::default(), &mut r),
        Err(Error::LengthMismatch { what: "bias", .. })
    ));
    assert!(matches!(
        PrivateConv::new(
            g,
            &k,
            None,
            LayerConfig { privacy: vericonv::Privacy::LowRank { rank: 0 }, ..LayerConfig::default() },
            &mut r
        )
        .err(),
        Some(Error::InvalidRank)
    ));
    assert!(matches!(
        PrivateConv::new(g, &k, None, LayerConfig { rounds: 0, ..LayerConfig::default() }, &mut r).err(),
        Some(Error::InvalidRounds)
    ));
    // 8-bit data allows M <= 66,572 terms: one more input channel breaks the bound.
    let wide = Conv2d::builder(66_573, 1, (1, 1), (1, 1)).build().expect("valid");
    let err = PrivateConv::new(
        wide,
        &vec![127; wide.kernel_len()],
        None,
        LayerConfig { name: "fc_wide".into(), ..LayerConfig::default() },
        &mut r,
    )
    .expect_err("bound");
    assert!(
        matches!(&err, Error::ExactnessBound { layer, m: 66_573, bx: 127, bw: 127, .. } if layer == "fc_wide"),
        "{err}"
    );
    assert!(err.to_string().contains("fc_wide"));
    let ok = Conv2d::builder(66_572, 1, (1, 1), (1, 1)).build().expect("valid");
    assert!(
        PrivateConv::new(ok, &vec![127; ok.kernel_len()], None, LayerConfig::default(), &mut r).is_ok(),
        "M = 66,572 is exactly within the bound"
    );
    // A huge bias alone can break it too; i32::MIN must not overflow anything.
    assert!(matches!(
        PrivateConv::new(g, &k, Some(&[i32::MIN, 0, 0]), LayerConfig::default(), &mut r),
        Err(Error::ExactnessBound { .. })
    ));
    assert!(matches!(
        PrivateConv::new(g, &vec![i32::MIN; g.kernel_len()], None, LayerConfig::default(), &mut r),
        Err(Error::ExactnessBound { .. })
    ));
}

#[test]
fn running_rejects_bad_inputs() {
    let g = geom();
    let mut r = seeded_rng(2);
    let mut layer = PrivateConv::new(
        g,
        &vec![1; g.kernel_len()],
        None,
        LayerConfig { name: "c1".into(), ..LayerConfig::default() },
        &mut r,
    )
    .expect("layer");
    let cpu = CpuBackend::new();
    assert!(matches!(layer.run(&cpu, &[], &mut r), Err(Error::LengthMismatch { .. })));
    assert!(matches!(layer.run(&cpu, &vec![0; g.image_len() + 1], &mut r), Err(Error::LengthMismatch { .. })));
    let mut x = vec![0; g.image_len()];
    x[7] = 128;
    assert!(matches!(
        layer.run(&cpu, &x, &mut r),
        Err(Error::ValueOutOfRange { index: 7, value: 128, bound: 127, .. })
    ));
    x[7] = i32::MIN;
    assert!(matches!(layer.run(&cpu, &x, &mut r), Err(Error::ValueOutOfRange { index: 7, .. })));
}

/// A cloud that answers with a fixed, malformed tensor.
struct Liar(fn(usize) -> Vec<u32>);

impl CloudBackend for Liar {
    fn name(&self) -> String {
        "liar".into()
    }
    fn call(&self, call: ConvCall<'_>, out: &mut Vec<u32>) -> Result<()> {
        *out = (self.0)(call.batch * call.geometry().output_image_len());
        Ok(())
    }
}

#[test]
fn malformed_cloud_answers_are_rejected_before_decryption() {
    let g = geom();
    let mut r = seeded_rng(3);
    let mut layer = PrivateConv::new(
        g,
        &vec![1; g.kernel_len()],
        None,
        LayerConfig { name: "c2".into(), ..LayerConfig::default() },
        &mut r,
    )
    .expect("layer");
    let x = vec![1; g.image_len()];
    for liar in [
        Liar(|n| vec![0; n - 1]),
        Liar(|n| vec![0; n + 5]),
        Liar(|_| Vec::new()),
        Liar(|n| vec![P; n]),
        Liar(|n| vec![u32::MAX; n]),
    ] {
        let err = layer.run(&liar, &x, &mut r).expect_err("malformed");
        assert!(matches!(&err, Error::MalformedAnswer { layer, .. } if layer == "c2"), "{err}");
    }
    let err = layer.run(&Liar(|n| vec![5; n]), &x, &mut r).expect_err("wrong values");
    assert!(matches!(err, Error::VerificationFailed { round: 1, mode: "fast", .. }), "{err}");
}

#[test]
fn low_level_functions_check_lengths_masks_and_field_elements() {
    let g = geom();
    let mut r = seeded_rng(4);
    let key = SessionKey::generate(&g, 2, &mut r).expect("key");
    let other =
        SessionKey::generate(&Conv2d::builder(2, 3, (6, 5), (3, 3)).build().expect("valid"), 2, &mut r).expect("key");
    assert!(matches!(SessionKey::generate(&g, 0, &mut r), Err(Error::InvalidRank)));
    let k = vec![1u32; g.kernel_len()];
    assert!(matches!(encrypt_kernel(&key, &k[1..]), Err(Error::LengthMismatch { .. })));
    let mut bad = k.clone();
    bad[3] = P;
    assert!(matches!(encrypt_kernel(&key, &bad), Err(Error::NotAFieldElement { index: 3, .. })));
    assert!(matches!(MaskKernel::new(&key, &bad), Err(Error::NotAFieldElement { .. })));
    let masks = ImageMask::generate_batch(&key, 2, &mut r);
    let x = vec![0u32; 2 * g.image_len()];
    assert!(matches!(encrypt_input(&key, &masks[..1], &x), Err(Error::LengthMismatch { .. })));
    assert!(matches!(
        encrypt_input(&key, &ImageMask::generate_batch(&other, 2, &mut r), &x),
        Err(Error::LengthMismatch { .. })
    ));
    assert!(matches!(encrypt_input(&key, &masks, &x[3..]), Err(Error::LengthMismatch { .. })));
    let mk = MaskKernel::new(&key, &k).expect("kg");
    // Decryption needs a verified answer. An answer of p everywhere is congruent to the right
    // one for X' = 0, so it passes verification: decryption itself rejects the encoding.
    let not_canonical = vec![P; 2 * g.output_image_len()];
    let claim = Claim::new(&g, 2, &k, &x, &not_canonical).expect("lengths match");
    let Verdict::Accepted(answer) = verify::<M31, _>(&claim, Mode::Fast, 1, &mut r).expect("verifies") else {
        panic!("p ≡ 0 passes verification")
    };
    assert!(matches!(decrypt(&key, &mk, &masks, &answer), Err(Error::NotAFieldElement { .. })));
    assert!(matches!(decrypt(&key, &mk, &masks[..1], &answer), Err(Error::LengthMismatch { .. })));
    let y = vec![0u32; 2 * g.output_image_len()];
    assert!(matches!(Claim::new(&g, 2, &k, &x, &y[1..]), Err(Error::LengthMismatch { what: "cloud output", .. })));
    assert!(matches!(Claim::new(&g, 2, &k[1..], &x, &y), Err(Error::LengthMismatch { what: "encrypted kernel", .. })));
    assert!(matches!(Claim::new(&g, 3, &k, &x, &y), Err(Error::LengthMismatch { what: "encrypted input", .. })));
    let claim = Claim::new(&g, 2, &k, &x, &y).expect("lengths match");
    assert!(matches!(verify::<M31, _>(&claim, Mode::Fast, 0, &mut r), Err(Error::InvalidRounds)));
    assert!(matches!(strict_products::<M31>(&claim, &[1, 2]), Err(Error::LengthMismatch { .. })));
    assert!(matches!(CpuBackend::new().conv(&g, 2, &k, &x[1..]), Err(Error::LengthMismatch { .. })));
    // Backends accept canonical elements only (their lazy reductions rely on it).
    let mut bad = x.clone();
    bad[3] = u32::MAX;
    assert!(matches!(
        CpuBackend::new().conv(&g, 2, &k, &bad),
        Err(Error::NotAFieldElement { what: "encrypted input", index: 3, .. })
    ));
}

#[test]
fn corrupt_onnx_files_give_typed_errors() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dir = tmp.path();
    assert!(matches!(vericonv_model::onnx::read_tensor(dir.join("missing.pb")), Err(ModelError::Io { .. })));
    // A valid FLOAT tensor of shape [2, 2] with only 3 values.
    let short = [0x08, 0x02, 0x08, 0x02, 0x10, 0x01, 0x4a, 0x0c, 0, 0, 0x80, 0x3f, 0, 0, 0, 0x40, 0, 0, 0x40, 0x40];
    std::fs::write(dir.join("short.pb"), short).expect("write");
    assert!(matches!(vericonv_model::onnx::read_tensor(dir.join("short.pb")), Err(ModelError::Parse { .. })));
    // Truncated in the middle of a field, then random garbage: errors or tensors, never panics.
    std::fs::write(dir.join("trunc.pb"), &short[..9]).expect("write");
    assert!(matches!(vericonv_model::onnx::read_tensor(dir.join("trunc.pb")), Err(ModelError::Parse { .. })));
    let mut r = rng(5);
    for i in 0..2000 {
        let mut junk = vec![0u8; (r.next_u32() % 64) as usize];
        r.fill_bytes(&mut junk);
        let path = dir.join("junk.pb");
        std::fs::write(&path, &junk).expect("write");
        let _ = vericonv_model::onnx::read_tensor(&path);
        if i % 100 == 0 {
            let _ = vericonv_model::onnx::read_model(&path);
        }
    }
    std::fs::write(dir.join("empty.onnx"), []).expect("write");
    assert!(
        matches!(vericonv_model::onnx::read_model(dir.join("empty.onnx")), Err(ModelError::Parse { .. })),
        "a model without a graph"
    );
}

#[test]
fn unsupported_onnx_conv_attributes_are_named() {
    use vericonv_model::onnx::proto::{AttributeProto, NodeProto};
    let node = |attrs: Vec<AttributeProto>| NodeProto {
        name: "n0".into(),
        op_type: "Conv".into(),
        attribute: attrs,
        ..NodeProto::default()
    };
    let attr = |name: &str, ints: Vec<i64>| AttributeProto { name: name.into(), ints, ..AttributeProto::default() };
    let x = [1, 2, 5, 5];
    let w = [3, 2, 3, 3];
    let err = vericonv_model::onnx::conv_geometry(&node(vec![attr("foo", vec![])]), &x, &w).expect_err("unknown");
    assert!(err.to_string().contains("foo"), "{err}");
    assert!(matches!(
        vericonv_model::onnx::conv_geometry(&node(vec![attr("strides", vec![1, 1, 1])]), &x, &w),
        Err(ModelError::Unsupported(_))
    ));
    assert!(matches!(
        vericonv_model::onnx::conv_geometry(&node(vec![]), &[1, 2, 5], &w),
        Err(ModelError::Unsupported(_))
    ));
    assert!(matches!(
        vericonv_model::onnx::conv_geometry(&node(vec![attr("pads", vec![-1, 0, 0, 0])]), &x, &w),
        Err(ModelError::Unsupported(_))
    ));
    assert!(matches!(
        vericonv_model::onnx::conv_geometry(&node(vec![]), &[1, 2, 2, 2], &w),
        Err(ModelError::Scheme(Error::KernelLargerThanInput { .. }))
    ));
    let (g, n) = vericonv_model::onnx::conv_geometry(
        &node(vec![attr("strides", vec![2, 2]), attr("pads", vec![1, 0, 1, 0])]),
        &x,
        &w,
    )
    .expect("valid");
    assert_eq!((g.ho(), g.wo(), n), (3, 2, 1));
}

#[test]
fn random_garbage_never_panics_the_client() {
    let g = geom();
    let mut r = rng(6);
    let mut layer =
        PrivateConv::new(g, &ints(&mut r, g.kernel_len(), 127), None, LayerConfig::default(), &mut seeded_rng(6))
            .expect("layer");
    let mut key_rng = seeded_rng(7);
    for _ in 0..200 {
        let len = (r.next_u32() as usize) % (3 * g.image_len());
        let x: Vec<i32> = (0..len).map(|_| r.next_u32() as i32).collect();
        let _ = layer.run(&CpuBackend::new(), &x, &mut key_rng);
    }
}
