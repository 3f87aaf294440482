// F_p arithmetic, p = 2^31 - 1, with native 64-bit integers (needs Features::SHADER_INT64).
// Accumulator: a u64 that grows by less than 2^32 per product, reduced once at the end.

alias Elem = u32;
alias Acc = u64;

const P: u32 = 2147483647u;
const P64: u64 = 2147483647lu;

fn acc_zero() -> Acc {
    return 0lu;
}

// acc + a·b, with the product folded (2^31 ≡ 1 mod p) to below 2^32.
fn acc_mac(acc: Acc, a: u32, b: u32) -> Acc {
    let prod = u64(a) * u64(b);
    return acc + (prod & P64) + (prod >> 31u);
}

fn acc_finish(acc: Acc) -> u32 {
    var t = (acc & P64) + (acc >> 31u);
    t = (t & P64) + (t >> 31u);
    let r = u32(t);
    return select(r, r - P, r >= P);
}
