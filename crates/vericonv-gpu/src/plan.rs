//! How a convolution is split to fit the device: chunks of output channels, output-row bands
//! (each itself a convolution with its own top padding) and images.

use crate::GpuError;
use bytemuck::{Pod, Zeroable};

use vericonv::Conv2d;
use vericonv::Result;

use crate::shaders::{ConvKernel, TILE, WORKGROUP_X};

/// The geometry uniform of every shader (`shaders/params.wgsl`, 20 × u32).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(crate) struct Params {
    pub(crate) cin: u32,
    pub(crate) h: u32,
    pub(crate) w: u32,
    pub(crate) cout: u32,
    pub(crate) kh: u32,
    pub(crate) kw: u32,
    pub(crate) sh: u32,
    pub(crate) sw: u32,
    pub(crate) dh: u32,
    pub(crate) dw: u32,
    pub(crate) pt: u32,
    pub(crate) pl: u32,
    pub(crate) ho: u32,
    pub(crate) wo: u32,
    pub(crate) cpg: u32,
    pub(crate) cpo: u32,
    pub(crate) o_base: u32,
    pub(crate) batch: u32,
    pub(crate) kstride4: u32,
    pub(crate) pad: u32,
}

impl Params {
    /// The whole layer for `batch` images.
    pub(crate) fn whole(g: &Conv2d, batch: usize) -> Self {
        Self {
            cin: u(g.cin()),
            h: u(g.h()),
            w: u(g.w()),
            cout: u(g.cout()),
            kh: u(g.kh()),
            kw: u(g.kw()),
            sh: u(g.stride().0),
            sw: u(g.stride().1),
            dh: u(g.dilation().0),
            dw: u(g.dilation().1),
            pt: u(g.padding().top),
            pl: u(g.padding().left),
            ho: u(g.ho()),
            wo: u(g.wo()),
            cpg: u(g.cin_per_group()),
            cpo: u(g.cout_per_group()),
            o_base: 0,
            batch: u(batch),
            kstride4: u(g.m().div_ceil(4)),
            pad: 0,
        }
    }
}

/// All geometry values fit in `u32`: [`Conv2d`] bounds every tensor below 2^31 elements.
pub(crate) fn u(v: usize) -> u32 {
    v as u32
}

/// How a convolution is split to fit a binding of `max_elems` elements and `max_groups`
/// workgroups per dispatch dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConvPlan {
    pub(crate) channels: usize,
    pub(crate) rows: usize,
    pub(crate) images: usize,
}

impl ConvPlan {
    /// Workgroups along x (output pixels) and y (output channels) for `pixels` outputs per
    /// channel and `channels` channels.
    pub(crate) fn workgroups(kernel: ConvKernel, pixels: usize, channels: usize) -> (usize, usize) {
        match kernel {
            ConvKernel::Simple => (pixels.div_ceil(WORKGROUP_X), channels),
            ConvKernel::Tiled => (pixels.div_ceil(TILE), channels.div_ceil(TILE)),
        }
    }

    pub(crate) fn new(g: &Conv2d, batch: usize, max_elems: u64, max_groups: usize, kernel: ConvKernel) -> Result<Self> {
        let max_elems = usize::try_from(max_elems).unwrap_or(usize::MAX);
        if g.m().div_ceil(4) * 4 > max_elems {
            return Err(GpuError::DeviceLimit(format!(
                "one kernel row ({} weights) exceeds the storage binding limit of {} bytes",
                g.m(),
                max_elems * 4
            ))
            .into());
        }
        let band_rows = |rows: usize| g.h().min((rows - 1) * g.stride().0 + (g.kh() - 1) * g.dilation().0 + 1);
        let fits = |rows: usize| {
            rows * g.wo() <= max_elems
                && g.cin() * band_rows(rows) * g.w() <= max_elems
                && Self::workgroups(kernel, rows * g.wo(), 1).0 <= max_groups
        };
        let mut rows = g.ho();
        while !fits(rows) {
            if rows == 1 {
                return Err(GpuError::DeviceLimit(format!(
                    "one output row ({} outputs, {} input rows of {}×{}) exceeds the storage binding limit of {} bytes or {} workgroups",
                    g.wo(),
                    band_rows(1),
                    g.cin(),
                    g.w(),
                    max_elems * 4,
                    max_groups
                )).into());
            }
            rows = rows.div_ceil(2);
        }
        // The tiled kernel pads kernel rows to a multiple of 4.
        let m = g.m().div_ceil(4) * 4;
        let channels = g.cout().min(max_elems / m).min(max_elems / (rows * g.wo())).min(max_groups).max(1);
        let per_image = (channels * rows * g.wo()).max(g.cin() * band_rows(rows) * g.w());
        let images = batch.min(max_elems / per_image).min(max_groups).max(1);
        Ok(Self { channels, rows, images })
    }
}

/// The input rows `[in_lo, in_hi)` that output rows `[y0, y0 + rows)` read, and the zero rows
/// above them (`pad_top`), so that the band is itself a convolution.
pub(crate) struct Band {
    pub(crate) in_lo: usize,
    pub(crate) in_hi: usize,
    pub(crate) pad_top: usize,
}

impl Band {
    pub(crate) fn new(g: &Conv2d, y0: usize, rows: usize) -> Self {
        let start = (y0 * g.stride().0) as isize - g.padding().top as isize;
        let end =
            ((y0 + rows - 1) * g.stride().0 + (g.kh() - 1) * g.dilation().0) as isize - g.padding().top as isize + 1;
        let h = g.h() as isize;
        let in_lo = start.clamp(0, h);
        let in_hi = end.clamp(0, h);
        Self { in_lo: in_lo as usize, in_hi: in_hi as usize, pad_top: (in_lo - start) as usize }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vericonv::Padding;

    #[test]
    fn plan_splits_channels_rows_and_images_to_fit_limits() {
        let g = Conv2d::builder(4, 8, (16, 16), (3, 3)).padding(Padding::uniform(1)).build().expect("valid");
        assert_eq!(
            ConvPlan::new(&g, 5, 1 << 30, 65535, ConvKernel::Tiled).expect("fits"),
            ConvPlan { channels: 8, rows: 16, images: 5 }
        );
        let p = ConvPlan::new(&g, 5, 300, 65535, ConvKernel::Simple).expect("fits after splitting");
        assert!(p.channels * p.rows * g.wo() <= 300 && p.rows < 16);
        assert!(
            ConvPlan::new(&g, 1, 20, 65535, ConvKernel::Simple).is_err(),
            "a kernel row of 36 weights cannot fit 20 elements"
        );
    }

    #[test]
    fn band_is_a_convolution_with_its_own_top_padding() {
        let g = Conv2d::builder(1, 1, (10, 4), (3, 1))
            .stride(2, 1)
            .padding(Padding::new(2, 0, 2, 0))
            .dilation(2, 1)
            .build()
            .expect("valid");
        let b = Band::new(&g, 0, 2);
        assert_eq!((b.in_lo, b.in_hi, b.pad_top), (0, 5, 2));
    }
}
