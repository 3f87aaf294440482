//! What a curious cloud recovers, both ways: the attack breaks mode `lowrank` on real inputs
//! (so the table of docs/privacy.md cannot go stale), and finds nothing of the inputs in modes `two-server`, `pad`
//! and `split-model` nor of the kernel in `split-model`,
//! whose every view passes the uniformity, rank and correlation tests.

use common::{data_dir_or_skip, rng};
use rand::{Rng, RngExt};
use vericonv::Privacy;
use vericonv::encrypt_input;
use vericonv::{Conv2d, Padding};
use vericonv::{ImageMask, SessionKey, seeded_rng};
use vericonv::{M31, PrimeField};
use vericonv_cli::attack::{AttackOptions, LayerAttack, attack_model, lowrank::recover_image};
use vericonv_model::Dataset;
use vericonv_model::Model;
use vericonv_model::{QuantConfig, QuantModel};

const IMAGES: usize = 30;

fn attack_lenet(privacy: Privacy) -> Option<Vec<LayerAttack>> {
    let data_dir = data_dir_or_skip()?;
    let path = common::repo_root().join("models/lenet5-mnist.json");
    let model = Model::load(&path).expect("committed model");
    let mut data = Dataset::open("mnist", &data_dir, false, 1, 28, 28).expect("mnist");
    data.truncate(IMAGES);
    let qm = QuantModel::new(&model, QuantConfig::default()).expect("quantizes");
    let opts = AttackOptions { privacy, seed: 0x5eed, ..AttackOptions::default() };
    println!("attack seed {:#x}, {privacy:?}", opts.seed);
    let rows: Vec<LayerAttack> = attack_model(&qm, &data, &opts, (None, None), |_, _, _| {})
        .expect("attack runs")
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    print!("{}", vericonv_cli::attack::format_table(&rows));
    Some(rows)
}

#[test]
fn lowrank_inputs_of_lenet5_are_recovered_exactly_from_what_the_cloud_receives() {
    for (rank, conv1_min, conv2_min) in [(1, IMAGES, IMAGES), (2, IMAGES, IMAGES * 8 / 10), (4, IMAGES * 9 / 10, 0)] {
        let Some(rows) = attack_lenet(Privacy::LowRank { rank }) else { return };
        let conv1 = &rows[0];
        let conv2 = &rows[1];
        let exact = |r: &LayerAttack| r.best_view().map_or(0, |v| v.exact_images);
        assert!(exact(conv1) >= conv1_min, "rank {rank}: conv1 {} of {IMAGES} recovered", exact(conv1));
        assert!(exact(conv2) >= conv2_min, "rank {rank}: conv2 {} of {IMAGES} recovered", exact(conv2));
        // The rank test sees it too: MNIST planes under a rank-ρ mask are rank-deficient.
        let stats = &conv1.views[0].stats;
        assert_eq!(stats.full_rank_planes, 0, "rank {rank}");
        // And every kernel slice of the first layer is known up to sign.
        assert_eq!(conv1.kernel_exact, conv1.kernel_slices);
    }
}

#[test]
fn two_server_pad_and_split_model_leave_the_input_attack_nothing_and_pass_every_statistical_test() {
    for privacy in [Privacy::TwoServer, Privacy::Pad, Privacy::SplitModel] {
        let Some(rows) = attack_lenet(privacy) else { return };
        for r in &rows {
            assert_eq!(r.views.len(), privacy.clouds(), "one view per cloud");
            for v in &r.views {
                let what = format!("{privacy:?} {} {}", r.layer, v.cloud);
                assert_eq!((v.exact_images, v.exact_pixels), (0, 0), "{what}: nothing recovered");
                assert_eq!((v.row_space_found, v.col_space_found), (0, 0), "{what}: no low-rank structure");
                let s = &v.stats;
                assert!(s.chi2_high_bits_p > 1e-4, "{what}: high bits uniform, p = {}", s.chi2_high_bits_p);
                assert!(s.chi2_positions_p > 1e-4, "{what}: every position uniform, p = {}", s.chi2_positions_p);
                assert_eq!(s.full_rank_planes, s.planes, "{what}: every plane of full rank");
                assert!(s.correlation.abs() < s.correlation_4_sigma, "{what}: correlation {}", s.correlation);
                if privacy == Privacy::SplitModel {
                    // Each cloud's kernel share: no slice recovered, uniform high bits, no
                    // correlation with the weights.
                    assert_eq!((v.kernel_exact, v.kernel_unique), (0, 0), "{what}: kernel slices recovered");
                    let k = &v.kernel_stats;
                    assert!(k.chi2_high_bits_p > 1e-4, "{what}: kernel share high bits, p = {}", k.chi2_high_bits_p);
                    assert!(
                        k.correlation.abs() < k.correlation_4_sigma,
                        "{what}: kernel correlation {}",
                        k.correlation
                    );
                }
            }
            if privacy == Privacy::SplitModel {
                assert_eq!(r.kernel_exact, 0, "split-model {}: kernel slices recovered", r.layer);
            } else {
                // The kernel is not private in two-server and pad: K' is the same as in lowrank.
                assert!(r.kernel_exact * 10 >= r.kernel_slices * 9, "{privacy:?} {}: kernel slices recovered", r.layer);
            }
        }
    }
}

/// A synthetic "digit": a constant background with a brighter random blob, like MNIST digits and
/// post-ReLU maps, without data files.
fn blob_image(r: &mut impl Rng, c: usize, h: usize, w: usize) -> Vec<i32> {
    let mut x = vec![0i32; c * h * w];
    for ch in 0..c {
        let bg = [0, -19, 7][ch % 3];
        let (y0, x0) = (r.random_range(2..h / 2), r.random_range(2..w / 2));
        for y in 0..h {
            for xx in 0..w {
                let inside = (y0..y0 + h / 3).contains(&y) && (x0..x0 + w / 3).contains(&xx);
                x[(ch * h + y) * w + xx] = if inside { r.random_range(bg + 1..=127) } else { bg };
            }
        }
    }
    x
}

#[test]
fn the_attack_inverts_lowrank_masks_on_structured_inputs_without_any_secret() {
    let seed = 0xb10b;
    let mut r = rng(seed);
    let g = Conv2d::builder(3, 4, (20, 20), (3, 3)).padding(Padding::uniform(1)).build().expect("valid");
    let mut attacker = seeded_rng(seed ^ 1);
    for rho in [1, 2, 3] {
        let key = SessionKey::generate(&g, rho, &mut seeded_rng(seed + rho as u64)).expect("key");
        for _ in 0..5 {
            let x = blob_image(&mut r, g.cin(), g.h(), g.w());
            let xf: Vec<u32> = x.iter().map(|&v| M31::embed(i64::from(v)).expect("small")).collect();
            let masks = ImageMask::generate_batch(&key, 1, &mut r);
            let xp = encrypt_input(&key, &masks, &xf).expect("encrypts");
            let rec = recover_image(&xp, g.cin(), g.h(), g.w(), 127, &mut attacker);
            let hw = g.h() * g.w();
            for cp in 0..g.cin() {
                let plain = &x[key.pi()[cp] * hw..][..hw];
                let got: Vec<Option<i32>> = rec.pixels[cp * hw..][..hw].to_vec();
                let exact = got.iter().zip(plain).filter(|&(g, &t)| *g == Some(t)).count();
                assert!(exact * 10 >= hw * 9, "rank {rho}, channel {cp}: {exact} of {hw} pixels recovered");
            }
        }
    }
}
