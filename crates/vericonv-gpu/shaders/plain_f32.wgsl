// Plaintext f32 arithmetic: turns the convolution body into the cloud-side f32 baseline.

alias Elem = f32;
alias Acc = f32;

fn acc_zero() -> Acc {
    return 0.0;
}

fn acc_mac(acc: Acc, a: f32, b: f32) -> Acc {
    return acc + a * b;
}

fn acc_finish(acc: Acc) -> f32 {
    return acc;
}
