// The geometry uniform shared by every kernel (20 × u32, mirrored by `Params` in gpu.rs).
// The host may split work into chunks: `o_base` is the first output channel of the chunk, and
// the geometry may describe a band of output rows (`h`, `pt` and `ho` are then the band's).

struct Params {
    cin: u32,       // input channels of the whole layer
    h: u32,         // input rows present in `input`
    w: u32,
    cout: u32,      // output channels in this chunk
    kh: u32,
    kw: u32,
    sh: u32,
    sw: u32,
    dh: u32,
    dw: u32,
    pt: u32,        // zero rows above the rows present
    pl: u32,
    ho: u32,        // output rows in this chunk
    wo: u32,
    cpg: u32,       // Cin / G
    cpo: u32,       // Cout / G of the whole layer
    o_base: u32,    // first output channel of this chunk
    batch: u32,     // images in this chunk
    kstride4: u32,  // kernel row length in vec4s (tiled kernel: rows padded to a multiple of 4)
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
