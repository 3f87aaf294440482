//! Verification: every cheating strategy is caught in every privacy mode (in mode `two-server`
//! with the cheating cloud named), and the false-accept rate of one round matches the bounds 1/p
//! (Strict) and 4/p (Fast) when measured with p = 97.

use common::{ints, rng};
use rand::RngExt;
use vericonv::Cheater;
use vericonv::Error;
use vericonv::Privacy;
use vericonv::conv_field;
use vericonv::seeded_rng;
use vericonv::{CallBuffers, LayerConfig, PrivateConv};
use vericonv::{Claim, Mode, verify};
use vericonv::{Clouds, CpuBackend, Tamper, TamperingBackend};
use vericonv::{Conv2d, Padding};
use vericonv::{PrimeField, SmallPrime};

const TRIALS: usize = 1000;

/// The layer of the tamper matrices: stride 2, asymmetric padding, two groups.
fn tamper_geometry() -> Conv2d {
    Conv2d::builder(4, 6, (7, 6), (3, 3))
        .stride(2, 1)
        .padding(Padding::new(1, 0, 2, 1))
        .groups(2)
        .build()
        .expect("valid")
}

#[test]
fn every_tampering_strategy_is_rejected_in_both_modes() {
    let seed = 0x7a3;
    let mut r = rng(seed);
    let g = tamper_geometry();
    let k = ints(&mut r, g.kernel_len(), 127);
    for mode in [Mode::Fast, Mode::Strict] {
        for strategy in Tamper::ALL {
            let cloud = TamperingBackend::new(CpuBackend::new(), &[strategy], 1.0, seed ^ strategy as u64);
            let mut key_rng = seeded_rng(r.random());
            let cfg = LayerConfig { name: "tampered".into(), mode, ..LayerConfig::default() };
            let mut layer = PrivateConv::new(g, &k, None, cfg, &mut key_rng).expect("layer");
            let mut rejected = 0;
            for _ in 0..TRIALS {
                let x = ints(&mut r, 2 * g.image_len(), 127);
                match layer.run(&cloud, &x, &mut key_rng) {
                    Err(Error::VerificationFailed { layer, mode: m, round, .. }) => {
                        assert_eq!((layer.as_str(), m, round), ("tampered", mode.name(), 1));
                        rejected += 1;
                    }
                    other => {
                        panic!("{strategy:?} in {mode:?} mode was not rejected: {:?}", other.map(|(y, _)| y.len()))
                    }
                }
            }
            assert_eq!(cloud.corrupted(), TRIALS as u64);
            assert_eq!(rejected, TRIALS, "{strategy:?} / {mode:?}");
        }
    }
}

/// Who cheats in the tamper matrix of the new modes.
#[derive(Clone, Copy, Debug)]
enum Cheating {
    Pad,
    TwoServerA,
    TwoServerB,
    TwoServerBoth,
}

#[test]
fn every_tampering_strategy_is_rejected_in_modes_pad_and_two_server_naming_the_cheater() {
    const MODE_TRIALS: usize = 200;
    let seed = 0x7a4;
    let mut r = rng(seed);
    let g = tamper_geometry();
    let k = ints(&mut r, g.kernel_len(), 127);
    let own = CpuBackend::new();
    for cheating in [Cheating::Pad, Cheating::TwoServerA, Cheating::TwoServerB, Cheating::TwoServerBoth] {
        for mode in [Mode::Fast, Mode::Strict] {
            for strategy in Tamper::ALL {
                let tag = seed ^ strategy as u64;
                let rate = |cheats: bool| if cheats { 1.0 } else { 0.0 };
                let (cheats_a, cheats_b) = match cheating {
                    Cheating::Pad | Cheating::TwoServerA => (true, false),
                    Cheating::TwoServerB => (false, true),
                    Cheating::TwoServerBoth => (true, true),
                };
                let a = TamperingBackend::new(CpuBackend::new(), &[strategy], rate(cheats_a), tag);
                let b = TamperingBackend::new(CpuBackend::new(), &[strategy], rate(cheats_b), tag ^ 0xb);
                let privacy = if matches!(cheating, Cheating::Pad) { Privacy::Pad } else { Privacy::TwoServer };
                let (clouds, expected) = match cheating {
                    Cheating::Pad => (Clouds::One(&a), Cheater::TheCloud),
                    Cheating::TwoServerA => (Clouds::Two(&a, &b), Cheater::CloudA),
                    Cheating::TwoServerB => (Clouds::Two(&a, &b), Cheater::CloudB),
                    Cheating::TwoServerBoth => (Clouds::Two(&a, &b), Cheater::BothClouds),
                };
                let mut key_rng = seeded_rng(r.random());
                let cfg = LayerConfig { name: "tampered".into(), mode, privacy, ..LayerConfig::default() };
                let mut layer = PrivateConv::new(g, &k, None, cfg, &mut key_rng).expect("layer");
                for _ in 0..MODE_TRIALS {
                    if privacy == Privacy::Pad {
                        let pool = layer.generate_pads(2, &own, &mut key_rng).expect("pads");
                        layer.add_pads(pool).expect("binds");
                    }
                    let x = ints(&mut r, 2 * g.image_len(), 127);
                    match layer.run(clouds, &x, &mut key_rng) {
                        Err(Error::VerificationFailed { cheater, round: 1, .. }) => {
                            assert_eq!(cheater, expected, "{strategy:?} / {cheating:?} / {mode:?}");
                        }
                        other => panic!(
                            "{strategy:?} by {cheating:?} in {mode:?} mode was not rejected: {:?}",
                            other.map(|(y, _)| y.len())
                        ),
                    }
                }
                assert_eq!(
                    a.corrupted() + b.corrupted(),
                    MODE_TRIALS as u64 * (u64::from(cheats_a) + u64::from(cheats_b))
                );
            }
        }
    }
}

/// The whole answer is verified before any of it is decrypted: for a rejected answer, in every
/// privacy mode and for every cheating strategy, no piece ever reaches the caller's epilogue
/// and the output is left as it was.
#[test]
fn a_rejected_answer_never_reaches_the_epilogue() {
    let seed = 0x7a5;
    let mut r = rng(seed);
    let g = tamper_geometry();
    let k = ints(&mut r, g.kernel_len(), 127);
    let own = CpuBackend::new();
    for privacy in [Privacy::LowRank { rank: 2 }, Privacy::Pad, Privacy::TwoServer] {
        for strategy in Tamper::ALL {
            let (bad, good) = (TamperingBackend::new(CpuBackend::new(), &[strategy], 1.0, seed), CpuBackend::new());
            let clouds = if privacy == Privacy::TwoServer { Clouds::Two(&good, &bad) } else { Clouds::One(&bad) };
            let mut key_rng = seeded_rng(r.random());
            let cfg = LayerConfig { privacy, ..LayerConfig::default() };
            let mut layer = PrivateConv::new(g, &k, None, cfg, &mut key_rng).expect("layer");
            if privacy == Privacy::Pad {
                layer.add_pads(layer.generate_pads(3, &own, &mut key_rng).expect("pads")).expect("binds");
            }
            let x: Vec<i8> = ints(&mut r, 3 * g.image_len(), 127).into_iter().map(|v| v as i8).collect();
            let mut out = vec![1.0f32; 3 * g.output_image_len()];
            let rows = std::sync::atomic::AtomicUsize::new(0);
            let epilogue = |_: usize, _: std::ops::Range<usize>, ints: &[i32], out: &mut [f32]| {
                rows.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                out.iter_mut().zip(ints).for_each(|(o, &v)| *o = v as f32 + 0.5);
            };
            let result = layer.run_into(clouds, &x, &mut key_rng, &mut CallBuffers::default(), &mut out, &epilogue);
            assert!(
                matches!(result, Err(Error::VerificationFailed { .. } | Error::MalformedAnswer { .. })),
                "{strategy:?} in {privacy:?} was not rejected"
            );
            assert_eq!(rows.into_inner(), 0, "{strategy:?} in {privacy:?}: a piece was decrypted");
            assert!(out.iter().all(|&v| v == 1.0), "{strategy:?} in {privacy:?}: the output was written");
        }
    }
}

#[test]
fn honest_answers_are_accepted_with_many_rounds() {
    let seed = 0x600d;
    let mut r = rng(seed);
    let g = Conv2d::builder(3, 4, (6, 6), (3, 3)).padding(Padding::uniform(1)).build().expect("valid");
    let k = ints(&mut r, g.kernel_len(), 127);
    for mode in [Mode::Fast, Mode::Strict] {
        let mut key_rng = seeded_rng(seed);
        let mut layer =
            PrivateConv::new(g, &k, None, LayerConfig { mode, rounds: 5, ..LayerConfig::default() }, &mut key_rng)
                .expect("layer");
        for _ in 0..50 {
            layer
                .run(&CpuBackend::new(), &ints(&mut r, 3 * g.image_len(), 127), &mut key_rng)
                .expect("honest cloud accepted");
        }
    }
}

type F97 = SmallPrime<97>;

/// Measures the one-round false-accept rate over `trials` wrong answers. `dense` spreads a
/// random error over every entry; otherwise one random entry gets a random non-zero error.
fn false_accept_rate(mode: Mode, trials: usize, dense: bool, seed: u64) -> f64 {
    let mut r = rng(seed);
    let g = Conv2d::builder(4, 4, (5, 5), (3, 3)).padding(Padding::new(1, 0, 1, 2)).groups(2).build().expect("valid");
    let batch = 2;
    let mut vrng = seeded_rng(seed);
    let mut accepted = 0usize;
    let mut kp = Vec::new();
    let mut xp = Vec::new();
    let mut honest = Vec::new();
    for trial in 0..trials {
        if trial % 1000 == 0 {
            kp = (0..g.kernel_len()).map(|_| F97::random(&mut r)).collect();
            xp = (0..batch * g.image_len()).map(|_| F97::random(&mut r)).collect();
            honest = conv_field::<F97>(&g, batch, &kp, &xp).expect("conv");
        }
        let mut yp = honest.clone();
        if dense {
            loop {
                let mut changed = false;
                for v in yp.iter_mut() {
                    let e = F97::random(&mut r);
                    changed |= e != 0;
                    *v = F97::add(*v, e);
                }
                if changed {
                    break;
                }
            }
        } else {
            let i = r.random_range(0..yp.len());
            yp[i] = F97::add(yp[i], F97::random_nonzero(&mut r));
        }
        if verify::<F97, _>(&Claim::new(&g, batch, &kp, &xp, &yp).expect("lengths"), mode, 1, &mut vrng)
            .expect("lengths")
            .is_accepted()
        {
            accepted += 1;
        }
    }
    accepted as f64 / trials as f64
}

/// Asserts `|observed - expected| <= 5σ` for a binomial proportion over `n` trials.
fn assert_rate(observed: f64, expected: f64, n: usize, what: &str) {
    let sigma = (expected * (1.0 - expected) / n as f64).sqrt();
    println!("{what}: observed {observed:.5}, expected {expected:.5} ± {:.5} (5σ)", 5.0 * sigma);
    assert!((observed - expected).abs() <= 5.0 * sigma, "{what}: observed {observed} is not within 5σ of {expected}");
}

#[test]
fn strict_mode_false_accept_rate_is_one_over_p() {
    let p = f64::from(F97::P);
    let n = 100_000;
    // A single wrong entry is missed exactly when r is zero there: probability 1/p.
    assert_rate(false_accept_rate(Mode::Strict, n, false, 0x51), 1.0 / p, n, "strict, one wrong entry");
    let dense = false_accept_rate(Mode::Strict, n, true, 0x52);
    let sigma = (1.0 / p / n as f64).sqrt();
    println!("strict, dense errors: observed {dense:.5} <= 1/p = {:.5}", 1.0 / p);
    assert!(dense <= 1.0 / p + 5.0 * sigma, "dense errors pass strict mode too often: {dense}");
}

#[test]
fn fast_mode_false_accept_rate_is_within_four_over_p() {
    let p = f64::from(F97::P);
    let n = 100_000;
    // A single wrong entry e at (b,o,y,x) is missed exactly when w_b·s_o·u_y·v_x = 0:
    // probability 1 - (1 - 1/p)^4, just below the Schwartz–Zippel bound 4/p.
    let exact = 1.0 - (1.0 - 1.0 / p).powi(4);
    assert_rate(false_accept_rate(Mode::Fast, n, false, 0xf1), exact, n, "fast, one wrong entry");
    assert!(exact <= 4.0 / p);
    let dense = false_accept_rate(Mode::Fast, n, true, 0xf2);
    let sigma = (4.0 / p / n as f64).sqrt();
    println!("fast, dense errors: observed {dense:.5} <= 4/p = {:.5}", 4.0 / p);
    assert!(dense <= 4.0 / p + 5.0 * sigma, "dense errors pass fast mode too often: {dense}");
}

#[test]
fn a_tampering_that_changes_nothing_is_not_counted() {
    // With a kernel of zeros every output plane is zero, whatever the mask: zeroing one changes
    // nothing, so nothing is counted, and the (honest) answer is accepted.
    let g = tamper_geometry();
    let zeros = vec![0i32; g.kernel_len()];
    let cloud = TamperingBackend::new(CpuBackend::new(), &[Tamper::ZeroChannel], 1.0, 3);
    let mut key_rng = seeded_rng(4);
    let mut layer = PrivateConv::new(g, &zeros, None, LayerConfig::default(), &mut key_rng).expect("layer");
    let (y, _) = layer.run(&cloud, &ints(&mut rng(5), 2 * g.image_len(), 127), &mut key_rng).expect("honest");
    assert!(y.iter().all(|&v| v == 0));
    assert_eq!(cloud.corrupted(), 0, "zeroing an all-zero plane is not a corruption");
    // The same strategy on a real kernel changes the answer: counted, and rejected.
    let k = ints(&mut rng(6), g.kernel_len(), 127);
    let mut layer = PrivateConv::new(g, &k, None, LayerConfig::default(), &mut key_rng).expect("layer");
    let result = layer.run(&cloud, &ints(&mut rng(7), 2 * g.image_len(), 127), &mut key_rng);
    assert!(matches!(result, Err(Error::VerificationFailed { .. })));
    assert_eq!(cloud.corrupted(), 1);
}
