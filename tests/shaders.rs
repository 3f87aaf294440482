//! Offline shader validation with naga: every WGSL program the GPU backend compiles parses and
//! validates, with no GPU needed.

use naga::valid::{Capabilities, ValidationFlags, Validator};
use vericonv_gpu::ShaderProgram;

fn validate(program: ShaderProgram, caps: Capabilities) -> Result<naga::Module, String> {
    let source = program.source();
    let module = naga::front::wgsl::parse_str(&source).map_err(|e| e.emit_to_string(&source))?;
    Validator::new(ValidationFlags::all(), caps).validate(&module).map_err(|e| e.emit_to_string(&source))?;
    Ok(module)
}

#[test]
fn every_shader_program_parses_and_validates() {
    for program in ShaderProgram::ALL {
        let caps = if program.needs_int64() { Capabilities::SHADER_INT64 } else { Capabilities::empty() };
        let module = validate(program, caps).unwrap_or_else(|e| panic!("{program:?}:\n{e}"));
        // Workgroup memory above the device limit is not validated on lavapipe: keep it <= 16 KiB.
        let layouter = {
            let mut l = naga::proc::Layouter::default();
            l.update(module.to_ctx()).expect("layout");
            l
        };
        let workgroup_bytes: u32 = module
            .global_variables
            .iter()
            .filter(|(_, v)| v.space == naga::AddressSpace::WorkGroup)
            .map(|(_, v)| layouter[v.ty].size)
            .sum();
        assert!(workgroup_bytes <= 16 * 1024, "{program:?} uses {workgroup_bytes} bytes of workgroup memory");
    }
}

#[test]
fn u64_variants_need_the_int64_capability_and_u32_variants_do_not() {
    for program in ShaderProgram::ALL {
        let result = validate(program, Capabilities::empty());
        assert_eq!(result.is_err(), program.needs_int64(), "{program:?}");
    }
}
