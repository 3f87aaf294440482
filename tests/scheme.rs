//! The scheme's algebra on the CPU backend: encryption, decryption, the mask identity, keys,
//! and end-to-end exactness on every test shape.

use common::{conv_shapes, ints, rng};
use rand::RngExt;
use vericonv::Mode;
use vericonv::Privacy;
use vericonv::{CloudBackend, CpuBackend};
use vericonv::{ImageMask, SessionKey, seeded_rng};
use vericonv::{LayerConfig, PrivateConv};
use vericonv::{M31, PrimeField};
use vericonv::{MaskKernel, mask_conv};
use vericonv::{conv_field, conv_i64};
use vericonv::{encrypt_input, encrypt_kernel, mask_tensor};

fn embed(v: &[i32]) -> Vec<u32> {
    v.iter().map(|&x| M31::embed(i64::from(x)).expect("small")).collect()
}

#[test]
fn decrypt_inverts_encrypt_for_every_shape_on_cpu() {
    let seed = 0xdec0de;
    let mut r = rng(seed);
    let cpu = CpuBackend::new();
    for (idx, (g, batch)) in conv_shapes(seed, 50).into_iter().enumerate() {
        let k = ints(&mut r, g.kernel_len(), 127);
        let bias = ints(&mut r, g.cout(), 1000);
        let x = ints(&mut r, batch * g.image_len(), 127);
        let mode = if idx % 2 == 0 { Mode::Fast } else { Mode::Strict };
        let cfg = LayerConfig {
            name: format!("shape{idx}"),
            mode,
            privacy: Privacy::LowRank { rank: 1 + idx % 3 },
            ..LayerConfig::default()
        };
        let mut key_rng = seeded_rng(seed + idx as u64);
        let mut layer = PrivateConv::new(g, &k, Some(&bias), cfg, &mut key_rng).expect("layer builds");
        let (y, _) = layer.run(&cpu, &x, &mut key_rng).unwrap_or_else(|e| panic!("shape {idx} {g:?}: {e}"));
        let k64: Vec<i64> = k.iter().map(|&v| i64::from(v)).collect();
        let x64: Vec<i64> = x.iter().map(|&v| i64::from(v)).collect();
        let mut expected = conv_i64(&g, batch, &k64, &x64).expect("lengths");
        for (plane, &b) in expected.chunks_exact_mut(g.n()).zip(bias.iter().cycle()) {
            plane.iter_mut().for_each(|v| *v += i64::from(b));
        }
        let got: Vec<i64> = y.iter().map(|&v| i64::from(v)).collect();
        assert_eq!(got, expected, "shape {idx}: {g:?} batch {batch}");
    }
}

/// The CPU backend's answer equals the F_p reference convolution.
fn assert_matches_reference(cpu: &CpuBackend, g: &vericonv::Conv2d, batch: usize, k: &[u32], x: &[u32], what: &str) {
    assert_eq!(cpu.conv(g, batch, k, x).expect("conv"), conv_field::<M31>(g, batch, k, x).expect("conv"), "{what}");
}

#[test]
fn cpu_backend_equals_reference_field_convolution() {
    let seed = 0xc0;
    let mut r = rng(seed);
    let cpu = CpuBackend::with_threads(2).expect("pool");
    for (g, batch) in conv_shapes(seed, 40) {
        let k: Vec<u32> = (0..g.kernel_len()).map(|_| M31::random(&mut r)).collect();
        let x: Vec<u32> = (0..batch * g.image_len()).map(|_| M31::random(&mut r)).collect();
        assert_matches_reference(&cpu, &g, batch, &k, &x, &format!("{g:?}"));
    }
}

#[test]
fn cpu_backend_is_exact_at_the_largest_elements_and_long_sums() {
    // Every product is (p-1)^2, the largest there is, summed over m = 603 terms: the lazy
    // reduction must not overflow. Cout = 7 leaves a partial row block, 11×13 a partial tile.
    let g = vericonv::Conv2d::builder(67, 7, (11, 13), (3, 3))
        .padding(vericonv::Padding::new(1, 1, 1, 1))
        .build()
        .expect("geometry");
    let cpu = CpuBackend::with_threads(2).expect("pool");
    let k = vec![M31::P - 1; g.kernel_len()];
    let x = vec![M31::P - 1; 2 * g.image_len()];
    assert_matches_reference(&cpu, &g, 2, &k, &x, "largest elements");
}

/// Whether this CPU runs the int8 path at all (it needs AVX-512 VNNI); printed, so that a run
/// on a CPU without it shows that only the F_p path was compared.
fn int8_path_here() -> bool {
    let g = vericonv::Conv2d::builder(1, 1, (1, 1), (1, 1)).build().expect("geometry");
    let here = CpuBackend::takes_int8_path(&g, &[1]);
    println!("int8 path on this CPU: {here}");
    here
}

#[test]
fn int8_path_equals_the_field_reference_on_every_shape() {
    // Mode `pad`'s offline `Conv(K, R)`: a signed-byte kernel, a uniform input.
    let seed = 0x1b8;
    let mut r = rng(seed);
    let here = int8_path_here();
    let cpu = CpuBackend::with_threads(2).expect("pool");
    let shapes = conv_shapes(seed, 50);
    assert!(shapes.len() >= 60);
    for (idx, (g, batch)) in shapes.into_iter().enumerate() {
        // Every other shape pins the kernel to the extremes -128 and 127.
        let k = if idx % 2 == 0 {
            ints(&mut r, g.kernel_len(), 127)
        } else {
            (0..g.kernel_len()).map(|_| if r.random_bool(0.5) { 127 } else { -128 }).collect()
        };
        let k = embed(&k);
        let x: Vec<u32> = (0..batch * g.image_len()).map(|_| M31::random(&mut r)).collect();
        assert_eq!(CpuBackend::takes_int8_path(&g, &k), here, "shape {idx}: {g:?}");
        assert_matches_reference(&cpu, &g, batch, &k, &x, &format!("shape {idx}: {g:?} batch {batch}"));
    }
}

#[test]
fn int8_path_is_exact_at_its_bound_and_gives_way_beyond_it() {
    let here = int8_path_here();
    let cpu = CpuBackend::with_threads(2).expect("pool");
    // Every product is -128·(p-1), the largest there is, with every byte of the input at its
    // largest, summed over m = 65,792 terms (rounded to quads, m·255·128 < 2^31): the i32 limb
    // sums are at their limit. Cout = 7 leaves a partial row block, 9×9 a partial tile.
    let at_bound = vericonv::Conv2d::builder(7310, 7, (9, 9), (3, 3))
        .padding(vericonv::Padding::new(1, 1, 1, 1))
        .build()
        .expect("geometry");
    let k = vec![M31::P - 128; at_bound.kernel_len()];
    let x = vec![M31::P - 1; at_bound.image_len()];
    assert_eq!(CpuBackend::takes_int8_path(&at_bound, &k), here);
    assert_matches_reference(&cpu, &at_bound, 1, &k, &x, "at the bound");
    // One more quad of the reduction and the i32 sums could wrap: the F_p path takes over.
    let beyond = vericonv::Conv2d::builder(7311, 1, (3, 3), (3, 3)).build().expect("geometry");
    let k = vec![M31::P - 128; beyond.kernel_len()];
    assert!(!CpuBackend::takes_int8_path(&beyond, &k));
    let x = vec![M31::P - 1; beyond.image_len()];
    assert_matches_reference(&cpu, &beyond, 1, &k, &x, "beyond the bound");
    // A kernel entry outside a signed byte: the F_p path.
    let small = vericonv::Conv2d::builder(2, 2, (4, 4), (3, 3)).build().expect("geometry");
    let mut k = embed(&vec![5; small.kernel_len()]);
    assert_eq!(CpuBackend::takes_int8_path(&small, &k), here);
    k[3] = M31::P - 129;
    assert!(!CpuBackend::takes_int8_path(&small, &k));
    k[3] = 128;
    assert!(!CpuBackend::takes_int8_path(&small, &k));
}

#[test]
fn cloud_output_is_alpha_times_plain_plus_mask_conv_in_sigma_order() {
    let seed = 0xa1fa;
    let mut r = rng(seed);
    for (g, batch) in conv_shapes(seed, 10) {
        let mut key_rng = seeded_rng(r.random());
        let key = SessionKey::generate(&g, 2, &mut key_rng).expect("rank 2");
        let k = embed(&ints(&mut r, g.kernel_len(), 127));
        let x = embed(&ints(&mut r, batch * g.image_len(), 127));
        let masks = ImageMask::generate_batch(&key, batch, &mut key_rng);
        let yp = conv_field::<M31>(
            &g,
            batch,
            &encrypt_kernel(&key, &k).expect("k"),
            &encrypt_input(&key, &masks, &x).expect("x"),
        )
        .expect("conv");
        let y = conv_field::<M31>(&g, batch, &k, &x).expect("conv");
        let mk = MaskKernel::new(&key, &k).expect("kg");
        for b in 0..batch {
            let r_b = mask_tensor(&key, &masks[b]);
            let direct = conv_field::<M31>(&g, 1, &k, &r_b).expect("conv");
            assert_eq!(mask_conv(&key, &mk, &masks[b]), direct, "separable Mk_b equals Conv(K, R_b)");
            for op in 0..g.cout() {
                let o = key.sigma()[op];
                for e in 0..g.n() {
                    let lhs = yp[(b * g.cout() + op) * g.n() + e];
                    let rhs =
                        M31::mul(key.alpha()[op], M31::add(y[(b * g.cout() + o) * g.n() + e], direct[o * g.n() + e]));
                    assert_eq!(lhs, rhs);
                }
            }
        }
    }
}

#[test]
fn kernel_and_input_encryption_follow_the_formulas() {
    let seed = 0xe5c;
    let mut r = rng(seed);
    let g = vericonv::Conv2d::builder(6, 9, (5, 4), (2, 3)).groups(3).build().expect("valid");
    let mut key_rng = seeded_rng(seed);
    let key = SessionKey::generate(&g, 3, &mut key_rng).expect("rank");
    let k = embed(&ints(&mut r, g.kernel_len(), 127));
    let kp = encrypt_kernel(&key, &k).expect("k");
    let (cpg, cpo) = (g.cin_per_group(), g.cout_per_group());
    for op in 0..g.cout() {
        let gp = op / cpo;
        assert_eq!(
            key.sigma()[op] / cpo,
            key.pi()[gp * cpg] / cpg,
            "σ and π map cloud group g' to the same plain group"
        );
        for clp in 0..cpg {
            let cp = gp * cpg + clp;
            let cl = key.pi()[cp] % cpg;
            for t in 0..6 {
                let want = M31::mul(
                    M31::mul(key.alpha()[op], M31::inv(key.beta()[cp])),
                    k[(key.sigma()[op] * cpg + cl) * 6 + t],
                );
                assert_eq!(kp[(op * cpg + clp) * 6 + t], want);
            }
        }
    }
    let x = embed(&ints(&mut r, 2 * g.image_len(), 127));
    let masks = ImageMask::generate_batch(&key, 2, &mut key_rng);
    let xp = encrypt_input(&key, &masks, &x).expect("x");
    for b in 0..2 {
        let r_b = mask_tensor(&key, &masks[b]);
        for cp in 0..g.cin() {
            let c = key.pi()[cp];
            for e in 0..20 {
                let want = M31::mul(key.beta()[cp], M31::add(x[(b * 6 + c) * 20 + e], r_b[c * 20 + e]));
                assert_eq!(xp[(b * 6 + cp) * 20 + e], want);
            }
        }
    }
    let mut sorted = key.sigma().to_vec();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..g.cout()).collect::<Vec<_>>(), "σ is a permutation");
    assert!(key.sigma().iter().enumerate().all(|(op, &o)| key.sigma_inv()[o] == op), "σ^-1 inverts σ");
    assert!(key.pi().iter().enumerate().all(|(cp, &c)| key.pi_inv()[c] == cp), "π^-1 inverts π");
    assert!(key.alpha().iter().chain(key.beta()).all(|&v| v != 0 && v < M31::P), "α, β ∈ F_p*");
}

#[test]
fn session_keys_rotate_after_the_policy_and_still_decrypt() {
    let seed = 0x707;
    let mut r = rng(seed);
    let g = vericonv::Conv2d::builder(2, 3, (6, 6), (3, 3)).build().expect("valid");
    let k = ints(&mut r, g.kernel_len(), 127);
    let cfg = LayerConfig { rotate_after_images: Some(2), ..LayerConfig::default() };
    let mut key_rng = seeded_rng(seed);
    let mut layer = PrivateConv::new(g, &k, None, cfg, &mut key_rng).expect("layer");
    let first = layer.encrypted_kernel().to_vec();
    let cpu = CpuBackend::new();
    let k64: Vec<i64> = k.iter().map(|&v| i64::from(v)).collect();
    for call in 0..4 {
        let x = ints(&mut r, g.image_len(), 127);
        let (y, t) = layer.run(&cpu, &x, &mut key_rng).expect("run");
        let x64: Vec<i64> = x.iter().map(|&v| i64::from(v)).collect();
        assert_eq!(y.iter().map(|&v| i64::from(v)).collect::<Vec<_>>(), conv_i64(&g, 1, &k64, &x64).expect("conv"));
        assert_eq!(t.keygen.is_zero(), call == 1 || call == 3, "setup reported at session starts only (call {call})");
    }
    assert_ne!(layer.encrypted_kernel(), first.as_slice(), "K' changed after rotation");
}

#[test]
fn secrets_are_not_printed_by_debug() {
    let g = vericonv::Conv2d::builder(3, 4, (6, 6), (3, 3)).build().expect("valid");
    let mut r = seeded_rng(0xdeb);
    let key = SessionKey::generate(&g, 2, &mut r).expect("key");
    let masks = ImageMask::generate_batch(&key, 1, &mut r);
    let k = vec![M31::P - 12_345; g.kernel_len()];
    let mk = MaskKernel::new(&key, &k).expect("kg");
    let layer = PrivateConv::new(g, &vec![100; g.kernel_len()], None, LayerConfig::default(), &mut r).expect("layer");
    let printed = format!("{key:?} {:?} {mk:?} {layer:?}", masks[0]);
    // Every secret is a large field element; none of them may appear in the text.
    let secrets = key
        .alpha()
        .iter()
        .chain(key.beta())
        .chain(key.channel_factor(0))
        .chain(masks[0].row_factor(0))
        .chain(masks[0].col_factor(1))
        .copied();
    for v in secrets.filter(|&v| v > 1_000_000) {
        assert!(!printed.contains(&v.to_string()), "{v} printed in {printed}");
    }
    assert!(!printed.contains("100,"), "the plain kernel is not printed: {printed}");
    println!("{printed}");
}
