//! Modes `two-server` (docs/scheme.md §11), `pad` (§12) and `split-model` (§14): exactness on
//! every test shape, the share generator, the pad pool's rules, pads drawn on demand, what each
//! cloud of `split-model` receives, naming the cheating cloud, and every misuse as a typed error.

use common::{exact_on_every_shape, expected, ints, rng};
use vericonv::Error;
use vericonv::Privacy;
use vericonv::seeded_rng;
use vericonv::{CloudBackend, Clouds, ConvCall, CpuBackend};
use vericonv::{Conv2d, Padding};
use vericonv::{LayerConfig, PrivateConv};
use vericonv::{M31, PrimeField};
use vericonv::{ShareSeed, expand_reference};

#[test]
fn two_server_decrypts_exactly_on_every_shape() {
    let (a, b) = (CpuBackend::new(), CpuBackend::with_threads(1).expect("pool"));
    exact_on_every_shape(Privacy::TwoServer, &a, &b, &CpuBackend::new(), 0x2ee, 50);
}

#[test]
fn pad_decrypts_exactly_on_every_shape() {
    let cpu = CpuBackend::new();
    exact_on_every_shape(Privacy::Pad, &cpu, &cpu, &cpu, 0x9ad, 50);
}

#[test]
fn split_model_decrypts_exactly_on_every_shape() {
    let (a, b) = (CpuBackend::new(), CpuBackend::with_threads(1).expect("pool"));
    exact_on_every_shape(Privacy::SplitModel, &a, &b, &CpuBackend::new(), 0x5b1, 50);
}

#[test]
fn share_generator_is_pinned_for_a_fixed_seed() {
    // ChaCha12 with key bytes 0, 1, ..., 31, each word cut to 31 bits (docs/scheme.md §11); the
    // values were computed with rand_chacha 0.9.0 directly, outside this crate.
    let seed: [u8; 32] = std::array::from_fn(|i| i as u8);
    let pinned = [2147037682, 1590065873, 636683588, 708897239, 526390089, 1011269314, 1137361897, 907680473];
    assert_eq!(ShareSeed::from_bytes(seed).expand(8), pinned);
    assert_eq!(expand_reference(&seed, 8), pinned);
    // Every element is canonical, and a long expansion starts with the short one.
    let long = ShareSeed::from_bytes(seed).expand(200_000);
    assert_eq!(long[..8], pinned);
    assert!(long.iter().all(|&v| v < M31::P));
}

#[test]
fn the_shares_add_up_to_the_scaled_input_and_the_seeded_cloud_equals_the_expanded_one() {
    let mut r = rng(0x5a5e);
    let g = Conv2d::builder(3, 4, (6, 5), (3, 3)).padding(Padding::uniform(1)).build().expect("valid");
    let key = vericonv::SessionKey::generate_for(&g, Privacy::TwoServer, &mut seeded_rng(1)).expect("key");
    let x: Vec<u32> =
        ints(&mut r, 2 * g.image_len(), 127).iter().map(|&v| M31::embed(i64::from(v)).expect("small")).collect();
    let seed = ShareSeed::generate(&mut seeded_rng(2));
    let (mut xp, mut xb) = (vec![0; x.len()], vec![0; x.len()]);
    vericonv::encrypt_shares_into(&key, &seed, &x, &mut xp, &mut xb).expect("encrypts");
    let xa = seed.expand(x.len());
    let hw = g.h() * g.w();
    for (idx, ((&s, &a), &b)) in xp.iter().zip(&xa).zip(&xb).enumerate() {
        assert_eq!(M31::add(a, b), s, "share sum at {idx}");
        let (img, cp) = (idx / g.image_len(), idx % g.image_len() / hw);
        let plain = x[img * g.image_len() + key.pi()[cp] * hw + idx % hw];
        assert_eq!(s, M31::mul(key.beta()[cp], plain), "X' = β·X[π] at {idx}");
    }
    let k: Vec<u32> = (0..g.kernel_len()).map(|_| M31::random(&mut r)).collect();
    let cpu = CpuBackend::new();
    assert_eq!(cpu.conv_share(&g, 2, &k, &seed).expect("conv"), cpu.conv(&g, 2, &k, &xa).expect("conv"));
}

#[test]
fn the_fused_two_server_pass_decrypts_an_honest_answer_and_withholds_a_wrong_one() {
    let mut r = rng(0xf05e);
    let g = Conv2d::builder(4, 6, (9, 7), (3, 3)).padding(Padding::uniform(1)).build().expect("valid");
    let key = vericonv::SessionKey::generate_for(&g, Privacy::TwoServer, &mut seeded_rng(1)).expect("key");
    let k = ints(&mut r, g.kernel_len(), 127);
    let x = ints(&mut r, 2 * g.image_len(), 127);
    let embed = |v: &[i32]| -> Vec<u32> { v.iter().map(|&a| M31::embed(i64::from(a)).expect("small")).collect() };
    let kp = vericonv::encrypt_kernel(&key, &embed(&k)).expect("K'");
    let seed = ShareSeed::generate(&mut r);
    let (mut xp, mut xb) = (vec![0; x.len()], vec![0; x.len()]);
    vericonv::encrypt_shares_into(&key, &seed, &embed(&x), &mut xp, &mut xb).expect("shares");
    let cpu = CpuBackend::new();
    let ya = cpu.conv_share(&g, 2, &kp, &seed).expect("A");
    let mut yb = cpu.conv(&g, 2, &kp, &xb).expect("B");
    let mut y = vec![0i32; ya.len()];
    for rounds in [1, 3] {
        let claim = vericonv::Claim::with_parts(&g, 2, &kp, &xp, &ya, &yb).expect("claim");
        let checks = vericonv::FastRounds::draw::<M31, _>(&claim, rounds, &mut r).expect("rounds");
        let verdict = vericonv::decrypt_sum_verified_into(&key, &checks, &ya, &yb, &mut y).expect("pass");
        assert!(verdict.is_accepted());
        assert_eq!(y, expected(&g, 2, &k, &x, &[0]), "{rounds} round(s)");
    }
    yb[17] = M31::add(yb[17], 1);
    let claim = vericonv::Claim::with_parts(&g, 2, &kp, &xp, &ya, &yb).expect("claim");
    let checks = vericonv::FastRounds::draw::<M31, _>(&claim, 2, &mut r).expect("rounds");
    let verdict = vericonv::decrypt_sum_verified_into(&key, &checks, &ya, &yb, &mut y).expect("pass");
    assert!(matches!(verdict, vericonv::Verdict::Rejected { round: 1 }));
    assert!(y.iter().all(|&v| v == 0), "a rejected answer is not left decrypted");
}

fn layer(privacy: Privacy, name: &str) -> (PrivateConv, Conv2d, Vec<i32>) {
    let g = Conv2d::builder(2, 3, (5, 5), (3, 3)).build().expect("valid");
    let k = ints(&mut rng(3), g.kernel_len(), 127);
    let cfg = LayerConfig { name: name.into(), privacy, ..LayerConfig::default() };
    (PrivateConv::new(g, &k, None, cfg, &mut seeded_rng(4)).expect("layer"), g, ints(&mut rng(5), g.image_len(), 127))
}

#[test]
fn misuse_of_the_modes_gives_typed_errors() {
    let (cpu, other) = (CpuBackend::new(), CpuBackend::new());
    let mut r = seeded_rng(6);

    // Two-server needs two clouds, and two different ones.
    let (mut two, _, x) = layer(Privacy::TwoServer, "two");
    assert!(matches!(two.run(&cpu, &x, &mut r), Err(Error::CloudCount { mode: "two-server", needed: 2, got: 1 })));
    assert!(matches!(two.run(Clouds::Two(&cpu, &cpu), &x, &mut r), Err(Error::SameCloudTwice(_))));
    two.run(Clouds::Two(&cpu, &other), &x, &mut r).expect("two different clouds");
    // So does split-model.
    let (mut split, _, _) = layer(Privacy::SplitModel, "split");
    assert!(matches!(split.run(&cpu, &x, &mut r), Err(Error::CloudCount { mode: "split-model", needed: 2, got: 1 })));
    assert!(matches!(split.run(Clouds::Two(&cpu, &cpu), &x, &mut r), Err(Error::SameCloudTwice(_))));
    split.run(Clouds::Two(&cpu, &other), &x, &mut r).expect("two different clouds");
    // And the one-cloud modes refuse two.
    let (mut low, _, _) = layer(Privacy::LowRank { rank: 2 }, "low");
    assert!(matches!(low.run(Clouds::Two(&cpu, &other), &x, &mut r), Err(Error::CloudCount { needed: 1, got: 2, .. })));

    // Pads: the staged API refuses an empty pool and an exhausted one (the one-shot `run` draws
    // what is missing instead, tested below); pads of another layer or key are refused.
    for (privacy, name) in [(Privacy::Pad, "pad"), (Privacy::SplitModel, "split pads")] {
        let (mut layer, _, _) = layer(privacy, name);
        assert!(matches!(layer.start(1, &mut r), Err(Error::PadPoolExhausted { needed: 1, available: 0, .. })));
        layer.add_pads(layer.generate_pads(1, &cpu, &mut r).expect("pads")).expect("binds");
        layer.start(1, &mut r).expect("one pad, one image");
        assert!(
            matches!(layer.start(1, &mut r), Err(Error::PadPoolExhausted { available: 0, .. })),
            "{name}: a pad is used once"
        );
        let (other_layer, _, _) = self::layer(privacy, "other");
        let foreign = other_layer.generate_pads(1, &cpu, &mut r).expect("pads");
        assert!(matches!(layer.add_pads(foreign), Err(Error::PadMismatch { .. })), "{name}: pads of another layer");
    }
    let (mut pad, _, x) = layer(Privacy::Pad, "pad");
    let (other_layer, _, _) = layer(Privacy::Pad, "other");
    let foreign = other_layer.generate_pads(2, &cpu, &mut r).expect("pads");
    assert!(matches!(pad.add_pads(foreign), Err(Error::PadMismatch { .. })), "pads of another layer");
    let stale = pad.generate_pads(2, &cpu, &mut r).expect("pads");
    pad.rotate(&mut r).expect("new key");
    assert!(matches!(pad.add_pads(stale), Err(Error::PadMismatch { .. })), "pads of the old key");
    // A pad taken by a call that then fails is gone too.
    let pool = pad.generate_pads(1, &cpu, &mut r).expect("pads");
    pad.add_pads(pool).expect("binds");
    let too_big = vec![1000; x.len()];
    assert!(matches!(pad.run(&cpu, &too_big, &mut r), Err(Error::ValueOutOfRange { .. })));
    assert_eq!(pad.pads_available(), 1, "input checks run before a pad is taken");
    let broken = vericonv::TamperingBackend::new(CpuBackend::new(), &[vericonv::Tamper::AllZeros], 1.0, 7);
    assert!(matches!(pad.run(&broken, &x, &mut r), Err(Error::VerificationFailed { .. })));
    assert_eq!(pad.pads_available(), 0, "the failed call consumed its pad");

    // Pads exist only in modes pad and split-model.
    assert!(matches!(
        low.generate_pads(1, &cpu, &mut r),
        Err(Error::WrongPrivacyMode { needed: "pad or split-model", .. })
    ));
}

#[test]
fn one_shot_calls_draw_missing_pads_on_the_clients_cpu_as_offline_work() {
    // Mode pad is the default: a layer built with the defaults and run with no pads prepared
    // draws its pads, reports that time as offline work, and stays exact.
    let (cpu, other) = (CpuBackend::new(), CpuBackend::new());
    let mut r = seeded_rng(0xd1a);
    let g = Conv2d::builder(2, 3, (5, 5), (3, 3)).build().expect("valid");
    let k = ints(&mut rng(3), g.kernel_len(), 127);
    let mut layer = PrivateConv::new(g, &k, None, LayerConfig::default(), &mut r).expect("layer");
    assert_eq!(layer.config().privacy, Privacy::Pad, "the default mode");
    for batch in [1, 3] {
        let x = ints(&mut rng(5 + batch as u64), batch * g.image_len(), 127);
        let (y, t) = layer.run(&cpu, &x, &mut r).expect("pads drawn on demand");
        assert_eq!(y, expected(&g, batch, &k, &x, &[0; 3]));
        assert!(t.offline > std::time::Duration::ZERO, "the drawing is reported as offline work");
        assert_eq!(layer.pads_available(), 0, "exactly the batch's pads were drawn");
    }
    // Prepared pads are used first: no offline work in the call.
    layer.refill_pads(2, &cpu, &mut r).expect("pads");
    let x = ints(&mut rng(9), 2 * g.image_len(), 127);
    let (_, t) = layer.run(&cpu, &x, &mut r).expect("prepared pads");
    assert_eq!(t.offline, std::time::Duration::ZERO);
    // Split-model the same way, on two clouds.
    let cfg = LayerConfig { privacy: Privacy::SplitModel, ..LayerConfig::default() };
    let mut split = PrivateConv::new(g, &k, None, cfg, &mut r).expect("layer");
    let (y, t) = split.run(Clouds::Two(&cpu, &other), &x, &mut r).expect("pads drawn on demand");
    assert_eq!(y, expected(&g, 2, &k, &x, &[0; 3]));
    assert!(t.offline > std::time::Duration::ZERO);
}

/// A cloud that records the kernels and inputs it receives.
struct Recording {
    inner: CpuBackend,
    kernels: std::sync::Mutex<Vec<Vec<u32>>>,
    inputs: std::sync::Mutex<Vec<Vec<u32>>>,
}

impl Recording {
    fn new() -> Self {
        Self { inner: CpuBackend::new(), kernels: Default::default(), inputs: Default::default() }
    }
}

impl CloudBackend for Recording {
    fn name(&self) -> String {
        "recording".into()
    }

    fn call(&self, call: ConvCall<'_>, out: &mut Vec<u32>) -> vericonv::Result<()> {
        self.kernels.lock().expect("not poisoned").push(call.kernel_data().to_vec());
        self.inputs.lock().expect("not poisoned").push(call.input_tensor()?.into_owned());
        self.inner.call(call, out)
    }
}

#[test]
fn split_model_clouds_see_kernel_shares_that_sum_to_the_kernel_and_the_same_padded_input() {
    let seed = 0x5b2;
    let mut r = rng(seed);
    let g = Conv2d::builder(4, 6, (7, 7), (3, 3)).padding(Padding::new(1, 1, 1, 1)).build().expect("valid");
    let k = ints(&mut r, g.kernel_len(), 127);
    let x = ints(&mut r, 2 * g.image_len(), 127);
    let (a, b) = (Recording::new(), Recording::new());
    let mut key_rng = seeded_rng(seed);
    let cfg = LayerConfig { privacy: Privacy::SplitModel, ..LayerConfig::default() };
    let mut layer = PrivateConv::new(g, &k, None, cfg, &mut key_rng).expect("layer");
    for _ in 0..3 {
        let (y, _) = layer.run(Clouds::Two(&a, &b), &x, &mut key_rng).expect("honest clouds");
        assert_eq!(y, expected(&g, 2, &k, &x, &[0; 6]));
    }
    let (ka, kb) = (a.kernels.into_inner().expect("lock"), b.kernels.into_inner().expect("lock"));
    let (ea, eb) = (a.inputs.into_inner().expect("lock"), b.inputs.into_inner().expect("lock"));
    assert_eq!((ka.len(), kb.len()), (3, 3));
    // One share per cloud for the session; together they are the plain kernel, alone neither
    // is (nor anywhere near: a uniform share agrees with K on about none of its entries).
    assert!(ka.iter().all(|s| s == &ka[0]) && kb.iter().all(|s| s == &kb[0]));
    let plain: Vec<u32> = k.iter().map(|&v| M31::embed(i64::from(v)).expect("small")).collect();
    let sum: Vec<u32> = ka[0].iter().zip(&kb[0]).map(|(&p, &q)| M31::add(p, q)).collect();
    assert_eq!(sum, plain);
    for share in [&ka[0], &kb[0]] {
        let agree = share.iter().zip(&plain).filter(|(s, p)| s == p).count();
        assert!(agree <= 1, "a share agrees with the kernel on {agree} entries");
        assert!(share.iter().filter(|&&v| v > 1 << 20 && v < M31::P - (1 << 20)).count() * 10 > share.len() * 9);
    }
    // Both clouds receive the same E = X + R per call, a fresh R every call: E - X differs
    // from call to call everywhere but by chance.
    assert_eq!(ea, eb);
    let xf: Vec<u32> = x.iter().map(|&v| M31::embed(i64::from(v)).expect("small")).collect();
    let pads: Vec<Vec<u32>> = ea.iter().map(|e| e.iter().zip(&xf).map(|(&e, &x)| M31::sub(e, x)).collect()).collect();
    for i in 0..pads.len() {
        for j in 0..i {
            let same = pads[i].iter().zip(&pads[j]).filter(|(p, q)| p == q).count();
            assert!(same <= 1, "calls {j} and {i} share {same} pad entries");
        }
    }
}

#[test]
fn split_model_names_the_cheating_cloud_for_every_strategy() {
    use vericonv::Cheater;
    use vericonv::{Tamper, TamperingBackend};
    let seed = 0x5b3;
    let g = Conv2d::builder(3, 4, (6, 6), (3, 3)).padding(Padding::new(1, 1, 1, 1)).build().expect("valid");
    let k = ints(&mut rng(seed), g.kernel_len(), 127);
    let x = ints(&mut rng(seed + 1), 2 * g.image_len(), 127);
    for mode in [vericonv::Mode::Fast, vericonv::Mode::Strict] {
        for strategy in Tamper::ALL {
            for (who, expected) in [("A", Cheater::CloudA), ("B", Cheater::CloudB), ("both", Cheater::BothClouds)] {
                let mut key_rng = seeded_rng(seed);
                let cfg = LayerConfig { privacy: Privacy::SplitModel, mode, ..LayerConfig::default() };
                let mut layer = PrivateConv::new(g, &k, None, cfg, &mut key_rng).expect("layer");
                let rate = |me: &str| if who == me || who == "both" { 1.0 } else { 0.0 };
                let a = TamperingBackend::new(CpuBackend::new(), &[strategy], rate("A"), seed);
                let b = TamperingBackend::new(CpuBackend::new(), &[strategy], rate("B"), seed + 1);
                match layer.run(Clouds::Two(&a, &b), &x, &mut key_rng) {
                    Err(Error::VerificationFailed { cheater, .. }) => {
                        assert_eq!(cheater, expected, "{mode:?} {strategy:?}, cloud {who}")
                    }
                    other => panic!("{mode:?} {strategy:?}, cloud {who}: not rejected: {:?}", other.map(|_| ())),
                }
            }
        }
    }
}

#[test]
fn answer_buffers_reused_across_layers_batches_and_rejections_keep_results_exact() {
    // One set of buffers for two layers of different sizes, in every mode: an answer buffer
    // left larger and dirty by one call, or by a rejected call, must not leak into the next.
    let seed = 0xb0f;
    let mut r = rng(seed);
    let shapes = [Conv2d::builder(3, 8, (9, 9), (3, 3)).build(), Conv2d::builder(2, 3, (4, 5), (3, 3)).build()];
    let shapes: Vec<Conv2d> = shapes.into_iter().map(|g| g.expect("valid")).collect();
    let (a, b, own) = (CpuBackend::new(), CpuBackend::new(), CpuBackend::new());
    let bad = vericonv::TamperingBackend::new(CpuBackend::new(), &[vericonv::Tamper::ALL[0]], 1.0, seed);
    for privacy in [Privacy::LowRank { rank: 2 }, Privacy::TwoServer, Privacy::Pad, Privacy::SplitModel] {
        let mut bufs = vericonv::CallBuffers::default();
        let mut key_rng = seeded_rng(seed);
        let mut layers: Vec<(PrivateConv, Conv2d, Vec<i32>)> = shapes
            .iter()
            .enumerate()
            .map(|(i, &g)| {
                let k = ints(&mut r, g.kernel_len(), 127);
                let cfg = LayerConfig { name: format!("l{i}"), privacy, ..LayerConfig::default() };
                (PrivateConv::new(g, &k, None, cfg, &mut key_rng).expect("layer"), g, k)
            })
            .collect();
        for (step, (which, batch, honest)) in
            [(0, 3, true), (1, 2, true), (0, 1, false), (1, 4, true), (0, 3, true)].into_iter().enumerate()
        {
            let (layer, g, k) = &mut layers[which];
            if privacy.uses_pads() {
                layer.add_pads(layer.generate_pads(batch, &own, &mut key_rng).expect("pads")).expect("binds");
            }
            let x = ints(&mut r, batch * g.image_len(), 127);
            let clouds = match (privacy.clouds(), honest) {
                (2, true) => Clouds::Two(&a, &b),
                (2, false) => Clouds::Two(&a, &bad),
                (_, true) => Clouds::One(&a),
                (_, false) => Clouds::One(&bad),
            };
            let mut y = vec![0i32; batch * g.output_image_len()];
            let copy = |_: usize, _: std::ops::Range<usize>, ints: &[i32], out: &mut [i32]| out.copy_from_slice(ints);
            let result = layer.run_into(clouds, &x, &mut key_rng, &mut bufs, &mut y, &copy);
            if honest {
                result.unwrap_or_else(|e| panic!("{privacy:?}, step {step}: {e}"));
                assert_eq!(y, expected(g, batch, k, &x, &vec![0; g.cout()]), "{privacy:?}, step {step}");
            } else {
                assert!(
                    matches!(result, Err(Error::VerificationFailed { .. } | Error::MalformedAnswer { .. })),
                    "{privacy:?}, step {step}: a tampered answer was not rejected"
                );
            }
        }
    }
}

#[test]
fn refilled_pads_overwrite_the_used_ones_and_are_fresh_every_pass() {
    let seed = 0x9ad;
    let mut r = rng(seed);
    let g = Conv2d::builder(3, 4, (6, 6), (3, 3)).padding(Padding::new(1, 1, 1, 1)).build().expect("valid");
    let k = ints(&mut r, g.kernel_len(), 127);
    let mut key_rng = seeded_rng(seed);
    let cfg = LayerConfig { privacy: Privacy::Pad, ..LayerConfig::default() };
    let mut layer = PrivateConv::new(g, &k, None, cfg, &mut key_rng).expect("layer");
    let (cloud, own) = (Recording::new(), CpuBackend::new());
    let x = ints(&mut r, 2 * g.image_len(), 127);
    let mut bufs = vericonv::CallBuffers::default();
    for pass in 0..4 {
        layer.refill_pads(2, &own, &mut key_rng).expect("pads");
        assert_eq!(layer.pads_available(), 2);
        let mut y = vec![0i32; 2 * g.output_image_len()];
        let copy = |_: usize, _: std::ops::Range<usize>, ints: &[i32], out: &mut [i32]| out.copy_from_slice(ints);
        layer.run_into(&cloud, &x, &mut key_rng, &mut bufs, &mut y, &copy).expect("honest cloud");
        assert_eq!(y, expected(&g, 2, &k, &x, &[0; 4]), "pass {pass}");
        assert_eq!(layer.pads_available(), 0, "pass {pass}: each pad is used once");
    }
    // The same input, masked with a fresh pad in every pass: no two tensors the cloud saw agree
    // anywhere near everywhere (a reused pad would repeat a whole tensor).
    let seen = cloud.inputs.into_inner().expect("not poisoned");
    assert_eq!(seen.len(), 4);
    for i in 0..seen.len() {
        for j in i + 1..seen.len() {
            let same = seen[i].iter().zip(&seen[j]).filter(|(a, b)| a == b).count();
            assert!(same < seen[i].len() / 100 + 2, "passes {i} and {j} share {same} elements");
        }
    }
}
