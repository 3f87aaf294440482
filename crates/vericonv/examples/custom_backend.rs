//! A cloud backend of your own: implement [`CloudBackend`] and the client masks, verifies and
//! unmasks around it. This one is the naive direct convolution over F_p, and it lies on request:
//! the second run shows verification refusing its answer before anything is decrypted.
//!
//! `cargo run --release --example custom_backend`

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use rand::RngExt;
use vericonv::M31;
use vericonv::conv_field;
use vericonv::os_rng;
use vericonv::{CloudBackend, ConvCall};
use vericonv::{Conv2d, Padding};
use vericonv::{Error, Result};
use vericonv::{LayerConfig, PrivateConv};

/// The direct convolution of `vericonv::reference`, counting what it receives.
struct NaiveCloud {
    elements_received: AtomicUsize,
    lie: AtomicBool,
}

impl CloudBackend for NaiveCloud {
    fn name(&self) -> String {
        "naive direct convolution".into()
    }

    // The one method a backend implements: every form of call (raw or session kernel, tensor
    // or seed input) comes here.
    fn call(&self, call: ConvCall<'_>, out: &mut Vec<u32>) -> Result<()> {
        // A backend must refuse bad arguments with a typed error, never panic.
        call.check()?;
        let (geom, kernel, input) = (call.geometry(), call.kernel_data(), call.input_tensor()?);
        self.elements_received.fetch_add(kernel.len() + input.len(), Ordering::Relaxed);
        let mut y = conv_field::<M31>(geom, call.batch, kernel, &input)?;
        if self.lie.load(Ordering::Relaxed) {
            y[0] = (y[0] + 1) % vericonv::P;
        }
        *out = y;
        Ok(())
    }
}

fn main() -> Result<()> {
    let geom = Conv2d::builder(4, 8, (16, 16), (3, 3)).padding(Padding::uniform(1)).build()?;
    let mut rng = os_rng();
    let kernel: Vec<i32> = (0..geom.kernel_len()).map(|_| rng.random_range(-127..=127)).collect();
    let batch: Vec<i32> = (0..2 * geom.image_len()).map(|_| rng.random_range(-127..=127)).collect();
    let cloud = NaiveCloud { elements_received: AtomicUsize::new(0), lie: AtomicBool::new(false) };

    let mut layer = PrivateConv::new(geom, &kernel, None, LayerConfig::default(), &mut rng)?;
    let (y, _) = layer.run(&cloud, &batch, &mut rng)?;
    println!(
        "{}: {} outputs verified and decrypted; the cloud received {} masked field elements",
        cloud.name(),
        y.len(),
        cloud.elements_received.load(Ordering::Relaxed)
    );

    cloud.lie.store(true, Ordering::Relaxed);
    match layer.run(&cloud, &batch, &mut rng) {
        Err(e @ Error::VerificationFailed { .. }) => println!("the lying cloud was caught: {e}"),
        Ok(_) => return Err(Error::Internal("a wrong answer was accepted".into())),
        Err(e) => return Err(e),
    }
    Ok(())
}
