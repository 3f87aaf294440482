//! `vericonv adapters`: the wgpu adapters of this machine.

#[cfg(feature = "gpu")]
use vericonv_gpu::list_adapters;

#[cfg(feature = "gpu")]
pub(crate) fn adapters() {
    let adapters = list_adapters();
    if adapters.is_empty() {
        println!(
            "no wgpu adapter found (install a GPU driver, or Mesa's lavapipe: apt-get install mesa-vulkan-drivers)"
        );
    }
    adapters.iter().for_each(|a| println!("{a}"));
}

#[cfg(not(feature = "gpu"))]
pub(crate) fn adapters() {
    println!("this build has no GPU backend (rebuild with the `gpu` feature)");
}
