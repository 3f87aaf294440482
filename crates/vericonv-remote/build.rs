//! Generates the gRPC code from `proto/vericonv.proto` with protox (a pure-Rust protobuf
//! compiler), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/vericonv.proto");
    let fds = protox::compile(["proto/vericonv.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
