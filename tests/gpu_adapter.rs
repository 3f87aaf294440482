//! Adapter selection: `WGPU_ADAPTER_NAME` that matches nothing is a typed error, not a panic
//! (wgpu's own helper panics here). Kept in its own test binary because it sets a
//! process-wide environment variable.

use vericonv::Error;
use vericonv_gpu::{GpuBackend, GpuError, GpuOptions};

#[test]
fn unknown_adapter_name_is_a_no_adapter_error() {
    // SAFETY: this binary has a single test, so no other thread reads the environment.
    unsafe { std::env::set_var("WGPU_ADAPTER_NAME", "no-such-adapter-xyz") };
    let err = GpuBackend::new(&GpuOptions::default()).expect_err("nothing matches");
    assert!(
        matches!(err.backend_error::<GpuError>(), Some(GpuError::NoAdapter(msg)) if msg.contains("no-such-adapter-xyz")),
        "{err}"
    );
    assert!(matches!(err, Error::Backend { exhausted: false, .. }), "{err}");
    println!("{err}");
}
