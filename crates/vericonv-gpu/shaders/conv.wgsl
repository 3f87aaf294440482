// Implicit-im2col convolution (docs/scheme.md §6): Y[b,o,n] = Σ_m K[o,m]·col_b[m,n], where the
// im2col matrix col_b is gathered on the fly from the input and never materialised.
// The arithmetic (Elem, Acc, acc_zero, acc_mac, acc_finish) comes from the prelude this body is
// appended to: F_p with u64 or u32 arithmetic, or plaintext f32.
//
// One invocation computes one output element; this is the simple kernel, the test oracle.
// The geometry uniform `params` comes from params.wgsl.

@group(0) @binding(1) var<storage, read> kernel: array<Elem>;
@group(0) @binding(2) var<storage, read> input: array<Elem>;
@group(0) @binding(3) var<storage, read_write> output: array<Elem>;

@compute @workgroup_size(64, 1, 1)
fn conv_main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n = gid.x;
    let ol = gid.y;
    let b = gid.z;
    let n_total = params.ho * params.wo;
    if (n >= n_total || ol >= params.cout || b >= params.batch) {
        return;
    }
    let grp = (params.o_base + ol) / params.cpo;
    let oy = n / params.wo;
    let ox = n % params.wo;
    var acc = acc_zero();
    for (var cl = 0u; cl < params.cpg; cl++) {
        let plane = (b * params.cin + grp * params.cpg + cl) * params.h;
        for (var i = 0u; i < params.kh; i++) {
            let row = i32(oy * params.sh + i * params.dh) - i32(params.pt);
            if (row < 0 || row >= i32(params.h)) {
                continue;
            }
            let k_row = ((ol * params.cpg + cl) * params.kh + i) * params.kw;
            let x_row = (plane + u32(row)) * params.w;
            for (var j = 0u; j < params.kw; j++) {
                let col = i32(ox * params.sw + j * params.dw) - i32(params.pl);
                if (col < 0 || col >= i32(params.w)) {
                    continue;
                }
                acc = acc_mac(acc, kernel[k_row + j], input[x_row + u32(col)]);
            }
        }
    }
    output[(b * params.cout + ol) * n_total + n] = acc_finish(acc);
}
