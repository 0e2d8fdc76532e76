//! Generates the prost types of `proto/openapiv2.proto` (gnostic's `openapi.v2` document, the
//! protobuf form of `/openapi/v2`) into `OUT_DIR`, so there is no committed copy that could
//! drift. `protoc` comes from `$PROTOC` or the `PATH` (Debian: `protobuf-compiler`,
//! `/usr/bin/protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/openapiv2.proto");
    prost_build::Config::new().compile_protos(&["proto/openapiv2.proto"], &["proto"])?;
    Ok(())
}
