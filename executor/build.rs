//! Generates the gRPC code for `proto/executor.proto` (tonic + prost) into `OUT_DIR`, so
//! there is no committed copy that could drift. `protoc` comes from `$PROTOC` or the `PATH`
//! (Debian: `protobuf-compiler`, `/usr/bin/protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/executor.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["proto/executor.proto"], &["proto"])?;
    Ok(())
}
