//! The batched Strict-mode verification products (docs/scheme.md §8) on the client's own GPU.

use crate::GpuError;
use wgpu::util::DeviceExt;

use vericonv::Conv2d;
use vericonv::Result;
use vericonv::{Claim, StrictProducts};
use vericonv::{M31, PrimeField};

use crate::conv::{grid_1d, storage_buffer, submit_and_read};
use crate::device::{Device, scoped};
use crate::plan::Params;

/// See [`crate::GpuBackend::strict_products`].
pub(crate) fn strict_products(gpu: &Device, claim: &Claim<'_>, r: &[u32]) -> Result<StrictProducts> {
    let (g, batch) = (claim.geometry(), claim.batch());
    let (kp, xp) = (claim.kernel(), claim.input());
    // A claim in two parts (mode two-server) is checked against their sum.
    let summed: Vec<u32>;
    let yp = match claim.output_b() {
        Some(b) => {
            summed = claim.output().iter().zip(b).map(|(&x, &y)| M31::add(x, y)).collect();
            &summed
        }
        None => claim.output(),
    };
    Conv2d::check_len("verification vector r", g.n(), r.len())?;
    let taps = g.kh() * g.kw();
    let max_elems = (gpu.info.max_binding_size / 4) as usize;
    let per_image = g.image_len().max(g.output_image_len()).max(g.cin() * taps);
    if per_image > max_elems || g.kernel_len() > max_elems {
        return Err(GpuError::DeviceLimit(format!(
            "one image of this layer needs {} bytes in one binding; the device allows {}",
            per_image.max(g.kernel_len()) * 4,
            gpu.info.max_binding_size
        ))
        .into());
    }
    let images = (max_elems / per_image).clamp(1, batch);
    let kbuf = storage_buffer(gpu, "kernel", kp, false);
    let rbuf = storage_buffer(gpu, "r", r, false);
    let mut products = StrictProducts {
        l: Vec::with_capacity(batch * g.cout()),
        t: Vec::with_capacity(batch * g.cin() * taps),
        v: Vec::with_capacity(batch * g.cout()),
    };
    for b0 in (0..batch).step_by(images) {
        let nb = images.min(batch - b0);
        let params = Params::whole(g, nb);
        let out_buf = |label: &str, len: usize| {
            gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: (len * 4) as u64,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            })
        };
        let (bind, lbuf, tbuf, vbuf) = scoped(&gpu.device, "buffer upload", || {
            let ubuf = gpu.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("params"),
                contents: bytemuck::bytes_of(&params),
                usage: wgpu::BufferUsages::UNIFORM,
            });
            let xbuf = storage_buffer(gpu, "input", &xp[b0 * g.image_len()..(b0 + nb) * g.image_len()], false);
            let ybuf =
                storage_buffer(gpu, "answer", &yp[b0 * g.output_image_len()..(b0 + nb) * g.output_image_len()], false);
            let (lbuf, tbuf, vbuf) =
                (out_buf("L", nb * g.cout()), out_buf("T", nb * g.cin() * taps), out_buf("V", nb * g.cout()));
            let bind = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("strict"),
                layout: &gpu.strict_layout,
                entries: &[
                    wgpu::BindGroupEntry { binding: 0, resource: ubuf.as_entire_binding() },
                    wgpu::BindGroupEntry { binding: 1, resource: kbuf.as_entire_binding() },
                    wgpu::BindGroupEntry { binding: 2, resource: xbuf.as_entire_binding() },
                    wgpu::BindGroupEntry { binding: 3, resource: ybuf.as_entire_binding() },
                    wgpu::BindGroupEntry { binding: 4, resource: rbuf.as_entire_binding() },
                    wgpu::BindGroupEntry { binding: 5, resource: lbuf.as_entire_binding() },
                    wgpu::BindGroupEntry { binding: 6, resource: tbuf.as_entire_binding() },
                    wgpu::BindGroupEntry { binding: 7, resource: vbuf.as_entire_binding() },
                ],
            });
            (bind, lbuf, tbuf, vbuf)
        })?;
        let grids = [grid_1d(gpu, nb * g.cout())?, grid_1d(gpu, nb * g.cin() * taps)?, grid_1d(gpu, nb * g.cout())?];
        let mut res = submit_and_read::<u32>(gpu, "strict verification", &[&lbuf, &tbuf, &vbuf], |enc| {
            for (pipeline, (x, y)) in gpu.strict.iter().zip(grids) {
                // One pass per stage: `kt` must see everything `im2col_r` wrote.
                let mut pass = enc
                    .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("strict"), timestamp_writes: None });
                pass.set_pipeline(pipeline);
                pass.set_bind_group(0, &bind, &[]);
                pass.dispatch_workgroups(x, y, 1);
            }
        })?;
        let v = res.pop().unwrap_or_default();
        let t = res.pop().unwrap_or_default();
        let l = res.pop().unwrap_or_default();
        products.l.extend(l);
        products.t.extend(t);
        products.v.extend(v);
    }
    Ok(products)
}
