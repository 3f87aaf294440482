//! The convolution itself: buffers, bindings, one submission per chunk of the plan, read-back.

use crate::GpuError;
use std::sync::mpsc;

use bytemuck::Pod;
use wgpu::util::DeviceExt;

use vericonv::Conv2d;
use vericonv::Result;
use vericonv::{SessionKernel, check_conv_args};

use crate::device::{Device, scoped};
use crate::plan::{Band, ConvPlan, Params, u};
use crate::shaders::{Arithmetic, ConvKernel, WORKGROUP_X};

/// See [`crate::GpuBackend::conv_f32`].
pub(crate) fn conv_f32(
    gpu: &Device,
    kernel: ConvKernel,
    geom: &Conv2d,
    batch: usize,
    weights: &[f32],
    input: &[f32],
) -> Result<Vec<f32>> {
    Conv2d::check_len("kernel", geom.kernel_len(), weights.len())?;
    Conv2d::check_len("input", batch * geom.image_len(), input.len())?;
    run_conv(gpu, Arithmetic::F32, kernel, geom, batch, weights, input, None)
}

/// See [`crate::GpuBackend::conv_field`].
pub(crate) fn conv_field(
    gpu: &Device,
    kernel: ConvKernel,
    geom: &Conv2d,
    batch: usize,
    weights: &[u32],
    input: &[u32],
) -> Result<Vec<u32>> {
    check_conv_args(geom, batch, weights, input)?;
    run_conv(gpu, Arithmetic::Field(gpu.variant), kernel, geom, batch, weights, input, None)
}

/// The pipeline for `arith` and `kernel`; grouped layers always get the simple kernel.
pub(crate) fn conv_pipeline<'g>(
    gpu: &'g Device,
    arith: Arithmetic,
    kernel: ConvKernel,
    g: &Conv2d,
) -> (&'g wgpu::ComputePipeline, ConvKernel) {
    let kernel = if g.groups() > 1 { ConvKernel::Simple } else { kernel };
    let a = usize::from(arith == Arithmetic::F32);
    (&gpu.conv[a][usize::from(kernel == ConvKernel::Tiled)], kernel)
}

/// Uploads the uniform and the input, creates an output buffer of `out_elems` elements and
/// binds them with `kbuf` for a convolution pipeline.
pub(crate) fn conv_bindings<T: Pod>(
    gpu: &Device,
    pipeline: &wgpu::ComputePipeline,
    params: &Params,
    kbuf: &wgpu::Buffer,
    input: &[T],
    out_elems: usize,
) -> Result<(wgpu::BindGroup, wgpu::Buffer)> {
    scoped(&gpu.device, "buffer upload", || {
        let ubuf = gpu.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("params"),
            contents: bytemuck::bytes_of(params),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let xbuf = storage_buffer(gpu, "input", input, false);
        let ybuf = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("output"),
            size: (out_elems * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let bind = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("conv"),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry { binding: 0, resource: ubuf.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 1, resource: kbuf.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 2, resource: xbuf.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 3, resource: ybuf.as_entire_binding() },
            ],
        });
        (bind, ybuf)
    })
}

/// The kernel buffer a pipeline reads: rows of `K` as they are for the simple kernel,
/// zero-padded to a multiple of 4 for the vec4 loads of the tiled one.
pub(crate) fn kernel_buffer<T: Pod + Default>(gpu: &Device, kernel: ConvKernel, m: usize, rows: &[T]) -> wgpu::Buffer {
    match kernel {
        ConvKernel::Simple => storage_buffer(gpu, "kernel", rows, false),
        ConvKernel::Tiled => {
            let m4 = m.div_ceil(4) * 4;
            let mut padded = vec![T::default(); rows.len() / m * m4];
            for (dst, src) in padded.chunks_exact_mut(m4).zip(rows.chunks_exact(m)) {
                dst[..m].copy_from_slice(src);
            }
            storage_buffer(gpu, "kernel", &padded, false)
        }
    }
}

pub(crate) fn storage_buffer<T: Pod>(gpu: &Device, label: &str, data: &[T], writable: bool) -> wgpu::Buffer {
    let usage =
        if writable { wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC } else { wgpu::BufferUsages::STORAGE };
    gpu.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some(label),
        contents: bytemuck::cast_slice(data),
        usage,
    })
}

/// Records `record` into one submission, copies `outputs` to staging buffers and reads them
/// back, all inside error scopes.
pub(crate) fn submit_and_read<T: Pod>(
    gpu: &Device,
    stage: &'static str,
    outputs: &[&wgpu::Buffer],
    record: impl FnOnce(&mut wgpu::CommandEncoder),
) -> Result<Vec<Vec<T>>> {
    let staging = scoped(&gpu.device, stage, || {
        let mut encoder = gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(stage) });
        record(&mut encoder);
        let staging: Vec<wgpu::Buffer> = outputs
            .iter()
            .map(|out| {
                let st = gpu.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("staging"),
                    size: out.size(),
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                encoder.copy_buffer_to_buffer(out, 0, &st, 0, out.size());
                st
            })
            .collect();
        gpu.queue.submit([encoder.finish()]);
        staging
    })?;
    let mut results = Vec::with_capacity(staging.len());
    for st in &staging {
        let slice = st.slice(..);
        let (tx, rx) = mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        gpu.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError::Wgpu { stage, message: e.to_string() })?;
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(GpuError::Wgpu { stage, message: format!("buffer mapping failed: {e}") }.into());
            }
            Err(_) => return Err(GpuError::Wgpu { stage, message: "buffer mapping was cancelled".into() }.into()),
        }
        let data: Vec<T> = {
            let view = slice.get_mapped_range().map_err(|e| GpuError::Wgpu { stage, message: e.to_string() })?;
            bytemuck::pod_collect_to_vec(&view)
        };
        st.unmap();
        results.push(data);
    }
    Ok(results)
}

/// Dispatch geometry for a 1-D range of `invocations`, folded into 2-D when it exceeds the
/// per-dimension limit.
pub(crate) fn grid_1d(gpu: &Device, invocations: usize) -> Result<(u32, u32)> {
    let groups = invocations.div_ceil(WORKGROUP_X);
    let max = gpu.info.max_workgroups_per_dimension as usize;
    let (x, y) = if groups <= max { (groups, 1) } else { (max, groups.div_ceil(max)) };
    if y > max {
        return Err(GpuError::DeviceLimit(format!(
            "{invocations} invocations exceed the dispatch limit of {max}×{max} workgroups"
        ))
        .into());
    }
    Ok((u(x), u(y)))
}

/// Runs a convolution over `T` elements, split into chunks that fit the limits. With a
/// `session` kernel, its buffers are taken from (or put in) the device's kernel cache.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_conv<T: Pod + Default>(
    gpu: &Device,
    arith: Arithmetic,
    kernel_choice: ConvKernel,
    g: &Conv2d,
    batch: usize,
    kernel: &[T],
    input: &[T],
    session: Option<&SessionKernel>,
) -> Result<Vec<T>> {
    let (pipeline, kernel_choice) = conv_pipeline(gpu, arith, kernel_choice, g);
    let plan = ConvPlan::new(
        g,
        batch,
        gpu.info.max_binding_size / 4,
        gpu.info.max_workgroups_per_dimension as usize,
        kernel_choice,
    )?;
    let (n, wo, hw) = (g.n(), g.wo(), g.h() * g.w());
    let mut out = vec![T::default(); batch * g.output_image_len()];
    for o0 in (0..g.cout()).step_by(plan.channels) {
        let oc = plan.channels.min(g.cout() - o0);
        let upload = || {
            gpu.kernel_uploads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            scoped(&gpu.device, "buffer upload", || {
                kernel_buffer(gpu, kernel_choice, g.m(), &kernel[o0 * g.m()..(o0 + oc) * g.m()])
            })
        };
        let kbuf = match session {
            Some(session) => {
                let key = (session.id(), o0, oc, kernel_choice);
                let cached = gpu.kernels.lock().unwrap_or_else(|e| e.into_inner()).get(&key, session);
                match cached {
                    Some(buf) => buf,
                    None => {
                        let buf = upload()?;
                        let entry = (buf.clone(), session.downgrade());
                        gpu.kernels.lock().unwrap_or_else(|e| e.into_inner()).insert(key, entry);
                        buf
                    }
                }
            }
            None => upload()?,
        };
        for y0 in (0..g.ho()).step_by(plan.rows) {
            let rows = plan.rows.min(g.ho() - y0);
            let band = Band::new(g, y0, rows);
            if band.in_hi <= band.in_lo {
                continue; // the band reads only zero padding: its output stays zero
            }
            let band_h = band.in_hi - band.in_lo;
            for b0 in (0..batch).step_by(plan.images) {
                let nb = plan.images.min(batch - b0);
                let full_band = band.in_lo == 0 && band.in_hi == g.h();
                let xband: std::borrow::Cow<[T]> = if full_band {
                    input[b0 * g.image_len()..(b0 + nb) * g.image_len()].into()
                } else {
                    let mut v = Vec::with_capacity(nb * g.cin() * band_h * g.w());
                    for plane in input[b0 * g.image_len()..(b0 + nb) * g.image_len()].chunks_exact(hw) {
                        v.extend_from_slice(&plane[band.in_lo * g.w()..band.in_hi * g.w()]);
                    }
                    v.into()
                };
                let params = Params {
                    h: u(band_h),
                    cout: u(oc),
                    pt: u(band.pad_top),
                    ho: u(rows),
                    o_base: u(o0),
                    ..Params::whole(g, nb)
                };
                let (bind, ybuf) = conv_bindings(gpu, pipeline, &params, &kbuf, &xband, nb * oc * rows * wo)?;
                let mut res = submit_and_read::<T>(gpu, "convolution", &[&ybuf], |enc| {
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("conv"),
                        timestamp_writes: None,
                    });
                    pass.set_pipeline(pipeline);
                    pass.set_bind_group(0, &bind, &[]);
                    let (x, y) = ConvPlan::workgroups(kernel_choice, rows * wo, oc);
                    pass.dispatch_workgroups(u(x), u(y), u(nb));
                })?;
                let chunk = res.remove(0);
                for (idx, src) in chunk.chunks_exact(rows * wo).enumerate() {
                    let (b, ol) = (b0 + idx / oc, o0 + idx % oc);
                    out[(b * g.cout() + ol) * n + y0 * wo..][..rows * wo].copy_from_slice(src);
                }
            }
        }
    }
    Ok(out)
}
